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

  /* An id as text that breaks only after its hyphens (between a UUID's
   * groups), and anywhere only where a part is wider than its line. */
  function showId(element, id) {
    const parts = String(id).split(/(?<=-)/);
    element.replaceChildren(...parts.flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part])));
  }

  function status(text, state) {
    const element = byId("status");
    element.textContent = text;
    element.dataset.state = state;
  }

  /* What both pages show while their signaling link is down or halted. */
  function signalingDown(refusal, delay) {
    const retry = "reconnecting in " + Math.ceil(delay / 1000) + " s";
    if (refusal) {
      status("Refused by the signaling server: " + refusal, "down");
      banner("signaling", "The signaling server refused this page (" + refusal + "): " + retry);
    } else {
      status("Signaling server unreachable: reconnecting…", "down");
      banner("signaling", "Connection to the signaling server is down: " + retry);
    }
  }

  function signalingHalted(why) {
    status(why, "down");
    banner("signaling", why + ": this page stays off the signaling server until you press Reconnect");
  }

  function backoff(attempt) {
    const base = Math.min(10000, 500 * 2 ** attempt);
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  /* Close code of a socket an operator closed (the admin's "Disconnect the
   * selected peers"): coming straight back would undo the operator's act. */
  const CLOSE_BY_OPERATOR = 4102;

  /* The Peer and its link to the signaling server. After a drop it calls
   * peer.reconnect() (same id, same token) with growing pauses; if the Peer
   * was destroyed (no id was ever granted), it makes a new one. After an
   * operator's close it waits for the Reconnect button (#reconnect) instead.
   * hooks: wantedId() -> id or null, token, onOpen(id), onDown(refusal, delayMs),
   *        onHalt(why), onError(err), onConnection(conn), onPeer(peer).
   * onDown's `refusal` is the text of the server's ERROR when it sent one
   * (a full server, a refused client), else null. */
  function Signaling(cfg, hooks) {
    this.cfg = cfg;
    this.hooks = hooks;
    this.peer = null;
    this.id = null;
    this.attempt = 0;
    this.timer = null;
    this.watchdog = null;
    this.stopped = false;
    this.halted = false; // closed by an operator: no retry until asked
    this.refusal = null; // the server's ERROR message, until a socket opens
    this.iceTimer = null;
    window.addEventListener("pagehide", () => this.stop());
    const button = byId("reconnect");
    if (button) button.addEventListener("click", () => this.resume());
  }

  Signaling.prototype.options = function (iceServers) {
    return {
      host: location.hostname,
      port: Number(location.port) || (location.protocol === "https:" ? 443 : 80),
      path: this.cfg.path,
      key: this.cfg.key,
      secure: location.protocol === "https:",
      token: this.hooks.token,
      config: { iceServers },
      debug: 1,
    };
  };

  /* The ICE servers for new connections: when the server hands out TURN
   * credentials (cfg.iceServersUrl), fresh ones from it, fetched again
   * halfway through their lifetime; else, or when the fetch fails, the
   * configured list (CUEPAGES_ICE_SERVERS). Resolves to the list, never fails. */
  Signaling.prototype.loadIceServers = function () {
    const fallback = this.cfg.iceServers;
    if (!this.cfg.iceServersUrl) return Promise.resolve(fallback);
    clearTimeout(this.iceTimer);
    // A silent network must not keep the page from starting: give up after 5 s.
    const request = { cache: "no-store", credentials: "same-origin", signal: AbortSignal.timeout(5000) };
    return fetch(this.cfg.iceServersUrl, request)
      .then((response) => {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then((answer) => {
        // setTimeout takes at most 2^31-1 ms (24.8 days).
        const refresh = Math.min(answer.ttl * 500, 2 ** 31 - 1);
        this.iceTimer = setTimeout(() => this.refreshIceServers(), refresh);
        return answer.iceServers;
      })
      .catch((error) => {
        console.warn("ICE servers: using the configured list (" + error.message + ")");
        return fallback;
      });
  };

  /* New credentials for the live Peer: PeerJS reads options.config for each
   * new RTCPeerConnection, so connections made from now on use them. */
  Signaling.prototype.refreshIceServers = function () {
    if (this.stopped) return;
    this.loadIceServers().then((servers) => {
      if (this.peer && !this.peer.destroyed) this.peer.options.config.iceServers = servers;
    });
  };

  /* Only the latest start makes a Peer: two Peers of one page would fight over its id. */
  Signaling.prototype.start = function () {
    const generation = (this.generation = (this.generation || 0) + 1);
    this.loadIceServers().then((servers) => {
      if (!this.stopped && generation === this.generation) this.makePeer(servers);
    });
  };

  Signaling.prototype.makePeer = function (iceServers) {
    const wanted = this.hooks.wantedId ? this.hooks.wantedId() : null;
    const peer = wanted ? new Peer(wanted, this.options(iceServers)) : new Peer(this.options(iceServers));
    this.peer = peer;
    this.arm();
    peer.on("open", (id) => {
      if (peer !== this.peer) return;
      clearTimeout(this.watchdog);
      this.id = id;
      this.attempt = 0;
      this.refusal = null;
      this.watchClose(peer);
      this.hooks.onOpen(id);
    });
    peer.on("disconnected", () => this.down(peer));
    peer.on("close", () => this.down(peer));
    peer.on("error", (err) => {
      if (peer !== this.peer) return;
      // A server ERROR frame (a refusal) arrives as "server-error" with the
      // server's text as the message, before PeerJS drops the socket. (A
      // failed id request is a "server-error" too, with an empty message.)
      if (err.type === "server-error" && err.message) this.refusal = err.message;
      if (this.hooks.onError) this.hooks.onError(err);
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

  /* PeerJS 1.5.5 keeps the close code to itself: its socket wrapper
   * (peer.socket) emits "disconnected" without the close event. So listen on
   * the WebSocket it wraps, peer.socket._socket, made anew by each
   * (re)connect: the one that delivered OPEN is the one to watch. Whichever
   * of this listener and PeerJS's own onclose runs first, halt() wins: it
   * cancels a retry that down() scheduled, and down() does nothing after it. */
  Signaling.prototype.watchClose = function (peer) {
    const socket = peer.socket && peer.socket._socket;
    if (!socket) return;
    socket.addEventListener("close", (event) => {
      if (event.code === CLOSE_BY_OPERATOR && peer === this.peer) this.halt("Disconnected by an operator");
    });
  };

  Signaling.prototype.halt = function (why) {
    if (this.stopped) return;
    this.halted = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    this.timer = null;
    const button = byId("reconnect");
    if (button) button.hidden = false;
    this.hooks.onHalt(why);
  };

  /* The Reconnect button: same id, same token, as a retry would. */
  Signaling.prototype.resume = function () {
    if (!this.halted || this.stopped) return;
    this.halted = false;
    this.attempt = 0;
    byId("reconnect").hidden = true;
    const peer = this.peer;
    if (peer && peer.disconnected && !peer.destroyed) {
      this.arm();
      peer.reconnect();
    } else {
      this.renew();
    }
  };

  Signaling.prototype.down = function (peer) {
    if (peer !== this.peer || this.stopped || this.halted) return;
    clearTimeout(this.watchdog);
    if (this.timer) return; // a retry is already scheduled
    const delay = backoff(this.attempt++);
    this.hooks.onDown(this.refusal, delay);
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
    clearTimeout(this.iceTimer);
    clearTimeout(this.watchdog);
    if (this.peer) this.peer.destroy();
  };

  Object.defineProperty(Signaling.prototype, "open", {
    get() {
      return !!this.peer && this.peer.open;
    },
  });

  return { config, byId, isPeerId, randomToken, log, banner, showId, status, signalingDown, signalingHalted, backoff, Signaling };
})();
