/* Shared by the receiver and the sender: configuration from the server, the
 * signaling connection that comes back on its own, the banner and the log.
 * Peer text only ever becomes text nodes (textContent / createTextNode). */
"use strict";

window.Cue = (() => {
  const ID_RULE = /^[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*$/;

  function config() {
    return JSON.parse(document.getElementById("cue-config").textContent);
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function isPeerId(value, maxLength) {
    return typeof value === "string" && value.length <= maxLength && ID_RULE.test(value);
  }

  function randomToken() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function clock(date) {
    return date.toTimeString().slice(0, 8);
  }

  /* A log line: the time, then the text as a text node. Newest first. */
  function log(list, text, kind) {
    const item = document.createElement("li");
    item.className = "log-" + (kind || "info");
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = clock(now);
    item.append(time, document.createTextNode(" " + text));
    list.prepend(item);
    while (list.children.length > 200) list.lastElementChild.remove();
  }

  /* One banner, several possible reasons for it; shown while any reason holds. */
  const reasons = new Map();
  function banner(reason, text) {
    if (text) reasons.set(reason, text);
    else reasons.delete(reason);
    const element = byId("banner");
    const texts = Array.from(reasons.values());
    element.textContent = texts.join(" · ");
    element.hidden = texts.length === 0;
  }

  function status(text, state) {
    const element = byId("status");
    element.textContent = text;
    element.dataset.state = state;
  }

  function backoff(attempt) {
    const base = Math.min(10000, 500 * 2 ** attempt);
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  /* The Peer and its link to the signaling server. After a drop it calls
   * peer.reconnect() (same id, same token) with growing pauses; if the Peer
   * was destroyed (no id was ever granted), it makes a new one.
   * hooks: wantedId() -> id or null, token, onOpen(id), onDown(why, delayMs),
   *        onError(err), onConnection(conn), onPeer(peer). */
  function Signaling(cfg, hooks) {
    this.cfg = cfg;
    this.hooks = hooks;
    this.peer = null;
    this.id = null;
    this.attempt = 0;
    this.timer = null;
    this.watchdog = null;
    this.stopped = false;
    window.addEventListener("pagehide", () => this.stop());
  }

  Signaling.prototype.options = function () {
    return {
      host: location.hostname,
      port: Number(location.port) || (location.protocol === "https:" ? 443 : 80),
      path: this.cfg.path,
      key: this.cfg.key,
      secure: location.protocol === "https:",
      token: this.hooks.token,
      config: { iceServers: this.cfg.iceServers },
      debug: 1,
    };
  };

  Signaling.prototype.start = function () {
    const wanted = this.hooks.wantedId ? this.hooks.wantedId() : null;
    const peer = wanted ? new Peer(wanted, this.options()) : new Peer(this.options());
    this.peer = peer;
    this.arm();
    peer.on("open", (id) => {
      if (peer !== this.peer) return;
      clearTimeout(this.watchdog);
      this.id = id;
      this.attempt = 0;
      this.hooks.onOpen(id);
    });
    peer.on("disconnected", () => this.down(peer, "lost the signaling server"));
    peer.on("close", () => this.down(peer, "signaling closed"));
    peer.on("error", (err) => {
      if (peer === this.peer && this.hooks.onError) this.hooks.onError(err);
    });
    peer.on("connection", (conn) => {
      if (peer === this.peer) this.hooks.onConnection(conn);
    });
    if (this.hooks.onPeer) this.hooks.onPeer(peer);
  };

  /* A socket that neither opens nor fails (a silent network) is cut after 10 s. */
  Signaling.prototype.arm = function () {
    clearTimeout(this.watchdog);
    const peer = this.peer;
    this.watchdog = setTimeout(() => {
      if (peer === this.peer && !peer.open && !peer.disconnected && !peer.destroyed) peer.disconnect();
    }, 10000);
  };

  Signaling.prototype.down = function (peer, why) {
    if (peer !== this.peer || this.stopped) return;
    clearTimeout(this.watchdog);
    if (this.timer) return; // a retry is already scheduled
    const delay = backoff(this.attempt++);
    this.hooks.onDown(why, delay);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.stopped || peer !== this.peer) return;
      if (peer.destroyed) {
        this.start();
      } else if (peer.disconnected) {
        this.arm();
        peer.reconnect();
      }
    }, delay);
  };

  /* Give up this Peer (and its id) and start afresh. */
  Signaling.prototype.renew = function () {
    const old = this.peer;
    clearTimeout(this.timer);
    this.timer = null;
    this.peer = null;
    if (old) old.destroy();
    this.start();
  };

  Signaling.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.peer) this.peer.destroy();
  };

  Object.defineProperty(Signaling.prototype, "open", {
    get() {
      return !!this.peer && this.peer.open;
    },
  });

  return { config, byId, isPeerId, randomToken, log, banner, status, backoff, Signaling };
})();
