// The hello app on Express with @godaddy/terminus, as terminus' README
// shows it: a health check and a cleanup on SIGTERM.
const http = require('http');
const express = require('express');
const { createTerminus } = require('@godaddy/terminus');

const delay = parseFloat(process.env.HELLO_REST_REQUEST_DELAY ?? '1.0') * 1000;
const app = express();
app.get('/', (req, res) => setTimeout(() => res.send('Hello World!'), delay));

const server = http.createServer(app);
createTerminus(server, {
  signals: ['SIGTERM', 'SIGINT'],
  healthChecks: { '/health': async () => 'OK' },
  onSignal: async () => {},
});
server.listen(Number(process.env.PORT ?? 3000), '127.0.0.1');
