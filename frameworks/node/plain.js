// The hello app on Node's http module; SIGTERM calls server.close().
const http = require('http');

const delay = parseFloat(process.env.HELLO_REST_REQUEST_DELAY ?? '1.0') * 1000;
const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    res.end('OK');
  } else if (req.url === '/') {
    setTimeout(() => res.end('Hello World!'), delay);
  } else {
    res.statusCode = 404;
    res.end();
  }
});
server.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
