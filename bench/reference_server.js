// The reference PeerServer (npm `peer`, pinned in package.json), mounted the
// way the seed application mounts it, so both servers share one URL layout:
// base /peerjs/myapp, key "peerjs", socket at /peerjs/myapp/peerjs.
//
//   node bench/reference_server.js PORT [HOST]
//
// Prints "listening PORT" once the socket is bound (bench/run.py waits for it).
// The benchmark never sends this server a garbage frame: peer 1.0.2 has no
// error listener in this setup and one non-JSON frame kills the process.
"use strict";

const http = require("node:http");
const express = require("express");
const { ExpressPeerServer } = require("peer");

const port = Number(process.argv[2] || 9000);
const host = process.argv[3] || "127.0.0.1";

const app = express();
const server = http.createServer(app);
const peerServer = ExpressPeerServer(server, {
  path: "/myapp",
  // The idle-peer phase holds thousands of peers; the default (5000) would
  // refuse them and measure the limit instead of the server.
  concurrent_limit: 100000,
});
app.use("/peerjs", peerServer);

server.listen(port, host, () => {
  console.log(`listening ${server.address().port}`);
});

const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
