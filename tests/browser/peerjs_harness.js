// What the PeerJS-app tests run in their pages: Peers as applications make
// them, with everything that happens to them written down on window.record,
// for the Python side to wait on and assert. Loaded after peerjs.min.js.
"use strict";

window.record = { peers: {}, conns: {}, calls: {} };

function peerRecord(name) {
  return (window.record.peers[name] = {
    id: null, open: false, disconnected: false, errors: [], serverFrames: [], sentFrames: [],
  });
}

// A Peer against the server that served this page. `id` may be null (the
// server assigns one); `options` are merged into the Peer's options.
window.makePeer = (name, id, options) => {
  const rec = peerRecord(name);
  const all = Object.assign({
    host: location.hostname,
    port: Number(location.port),
    path: "/peerjs/myapp",
    key: "peerjs",
    secure: false,
    config: { iceServers: [] },
  }, options || {});
  const peer = id ? new Peer(id, all) : new Peer(all);
  window[name] = peer;
  peer.on("open", (assigned) => { rec.id = assigned; rec.open = true; });
  peer.on("error", (err) => { rec.errors.push({ type: err.type, message: err.message }); });
  peer.on("disconnected", () => { rec.disconnected = true; });
  // Every frame the server sent this Peer, after the Peer itself handled it.
  peer.socket.on("message", (frame) => { rec.serverFrames.push(frame.type); });
  // And every frame it sent.
  const send = peer.socket.send.bind(peer.socket);
  peer.socket.send = (data) => { rec.sentFrames.push(data.type); send(data); };
  peer.on("connection", (conn) => watchConnection(`${name}<-${conn.peer}#${conn.label}`, conn));
  peer.on("call", (call) => {
    window.stream = window.stream || window.drawnStream();
    call.answer(window.stream);
    watchCall(`${name}<-${call.peer}#${call.connectionId}`, call);
  });
  return peer;
};

function watchConnection(key, conn) {
  const rec = (window.record.conns[key] = { open: false, closed: false, errors: [], received: [], metadata: conn.metadata, label: conn.label });
  conn.on("open", () => { rec.open = true; });
  conn.on("close", () => { rec.closed = true; });
  conn.on("error", (err) => { rec.errors.push(err.type || String(err)); });
  conn.on("data", (data) => { rec.received.push(data); });
  window.conns = window.conns || {};
  window.conns[key] = conn;
  return rec;
}

window.openConnection = (peerName, key, dst, options) => {
  const conn = window[peerName].connect(dst, options || { reliable: true });
  watchConnection(key, conn);
  return key;
};

// Both ends of every open connection: the key of the other end's record.
window.connectionTo = (peerName, remoteId) =>
  Object.keys(window.record.conns).find((key) => key.startsWith(`${peerName}<-${remoteId}#`));

// Send `count` numbered messages ("tag:0", "tag:1", ...) on a connection,
// one every `interval` ms.
window.chatter = (key, tag, count, interval) => {
  const conn = window.conns[key];
  let sent = 0;
  const timer = setInterval(() => {
    if (sent >= count) { clearInterval(timer); return; }
    conn.send(`${tag}:${sent}`);
    sent += 1;
  }, interval);
};

// A video stream the page draws itself: no camera needed.
window.drawnStream = () => {
  const canvas = document.createElement("canvas");
  canvas.width = 32; canvas.height = 32;
  const ctx = canvas.getContext("2d");
  let frame = 0;
  setInterval(() => { ctx.fillStyle = `hsl(${(frame += 20) % 360} 80% 50%)`; ctx.fillRect(0, 0, 32, 32); }, 50);
  return canvas.captureStream(10);
};

function watchCall(key, call) {
  const rec = (window.record.calls[key] = { stream: false, closed: false, errors: [], trackStates: [] });
  call.on("stream", (stream) => {
    rec.stream = true;
    rec.tracks = stream.getTracks();
  });
  call.on("close", () => { rec.closed = true; });
  call.on("error", (err) => { rec.errors.push(err.type || String(err)); });
  window.calls = window.calls || {};
  window.calls[key] = call;
  return rec;
}

window.openCall = (peerName, key, dst) => {
  window.stream = window.stream || window.drawnStream();
  watchCall(key, window[peerName].call(dst, window.stream));
  return key;
};

// Frames decoded so far on a call's incoming video: grows while media flows.
window.framesDecoded = async (key) => {
  const stats = await window.calls[key].peerConnection.getStats();
  let frames = 0;
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video") frames += report.framesDecoded || 0;
  });
  return frames;
};
