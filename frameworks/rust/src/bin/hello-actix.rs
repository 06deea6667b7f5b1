//! The hello app on actix-web, which handles SIGTERM itself (graceful, with
//! its default 30 s shutdown timeout).
use actix_web::{App, HttpServer, get};

#[get("/")]
async fn hello() -> &'static str {
    actix_web::rt::time::sleep(frameworks_hello::delay()).await;
    "Hello World!"
}

#[get("/health")]
async fn health() -> &'static str {
    "OK"
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    HttpServer::new(|| App::new().service(hello).service(health))
        .bind(("127.0.0.1", frameworks_hello::port()))?
        .run()
        .await
}
