/* The receiver: shows its id, lights the cue the sender fires, acknowledges
 * it, and accepts one sender at a time. Its id (and the token that proves it
 * is ours) is kept in localStorage, so a reload keeps the share link valid. */
"use strict";

(() => {
  const cfg = Cue.config();
  const $ = Cue.byId;
  const ui = {
    id: $("receiver-id"),
    link: $("share-link"),
    qr: $("share-qr"),
    hint: $("share-hint"),
    announcer: $("announcer"),
    log: $("log"),
    form: $("message-form"),
    message: $("message"),
    clear: $("clear-log"),
  };
  const CUES = { go: "Go", fade: "Fade", off: "All Off", reset: "Standby" };
  const SILENT_MS = 6000; // a sender not heard for this long is gone (it pings every 2 s)
  const REFUSAL = "Already connected to another client";
  const STORE_ID = "cue.receiver.id";
  const STORE_TOKEN = "cue.receiver.token";

  let sender = null; // the DataConnection of the one sender we accept
  let lastHeard = 0;
  let takenCount = 0; // consecutive "ID is taken" answers
  let persistId = true; // false in a second tab of this browser: see claim()

  const store = {
    get(key) {
      try { return localStorage.getItem(key); } catch (e) { return null; }
    },
    set(key, value) {
      try {
        if (value === null) localStorage.removeItem(key);
        else localStorage.setItem(key, value);
      } catch (e) { /* private mode: the id just won't survive a reload */ }
    },
  };

  let token = store.get(STORE_TOKEN);
  if (!token) {
    token = Cue.randomToken();
    store.set(STORE_TOKEN, token);
  }
  let wantedId = store.get(STORE_ID);
  if (wantedId && !Cue.isPeerId(wantedId, cfg.idMaxLength)) wantedId = null;

  function log(text, kind) {
    Cue.log(ui.log, text, kind);
  }

  function announce(text) {
    ui.announcer.replaceChildren(document.createTextNode(text));
  }

  function flash() {
    document.body.classList.remove("flash");
    void document.body.offsetWidth; // restart the animation
    document.body.classList.add("flash");
  }

  function show(cue) {
    const lit = cue === "reset" ? "standby" : cue;
    for (const indicator of document.querySelectorAll(".cue[data-cue]")) {
      indicator.hidden = indicator.dataset.cue !== lit;
    }
    document.body.dataset.cue = lit;
  }

  function showIdentity(id) {
    Cue.showId(ui.id, id);
    const base = cfg.publicUrl || location.origin;
    const link = base + cfg.sendUrl + "?id=" + encodeURIComponent(id);
    ui.link.href = link;
    ui.link.textContent = link;
    ui.qr.src = cfg.qrUrl + "?id=" + encodeURIComponent(id);
    ui.qr.hidden = false;
    const host = new URL(base).hostname;
    const local = host === "localhost" || host === "[::1]" || host.startsWith("127.");
    ui.hint.textContent = local
      ? "This link names this computer as “" + host + "”, which other devices cannot reach: open the receiver by the computer's network address (or set CUEPAGES_PUBLIC_URL)."
      : "";
    ui.hint.hidden = !local;
  }

  function updateStatus() {
    if (!signaling.open) return;
    if (sender && sender.open) Cue.status("Connected to sender " + sender.peer, "connected");
    else Cue.status("Ready: waiting for a sender", "ready");
  }

  /* --- the sender's connection ------------------------------------------ */

  function busy(conn) {
    return sender !== null && sender.peer !== conn.peer && Date.now() - lastHeard < SILENT_MS;
  }

  function refuse(conn) {
    log("Refused sender " + conn.peer + ": already connected to another client", "warn");
    conn.on("open", () => {
      conn.send({ type: "refused", reason: REFUSAL });
      setTimeout(() => conn.close(), 1000);
    });
  }

  function drop(conn, why) {
    if (conn !== sender) return;
    sender = null;
    conn.close();
    log("Sender " + conn.peer + " " + why, "warn");
    Cue.banner("sender", "Link to the sender is down: waiting for it to reconnect");
    updateStatus();
  }

  function adopt(conn) {
    if (sender) {
      const old = sender;
      sender = null;
      old.close();
    }
    sender = conn;
    lastHeard = Date.now();
    conn.on("open", () => {
      if (conn !== sender) return;
      lastHeard = Date.now();
      log("Sender " + conn.peer + " connected", "ok");
      Cue.banner("sender", null);
      updateStatus();
    });
    conn.on("data", (data) => {
      if (conn === sender) receive(conn, data);
    });
    conn.on("close", () => drop(conn, "disconnected"));
    conn.on("error", (err) => drop(conn, "link failed (" + (err.type || err.message || err) + ")"));
  }

  function receive(conn, data) {
    lastHeard = Date.now();
    if (typeof data === "string") {
      log("Sender: " + data.slice(0, 500), "message");
      return;
    }
    if (!data || typeof data !== "object") return;
    switch (data.type) {
      case "cue": {
        if (!Object.prototype.hasOwnProperty.call(CUES, data.cue)) return;
        show(data.cue);
        flash();
        const name = CUES[data.cue];
        announce(data.cue === "reset" ? "Reset: Standby" : "Cue: " + name);
        conn.send({ type: "ack", seq: data.seq, cue: data.cue });
        log(data.cue === "reset" ? "Reset to Standby" : "Cue: " + name, "cue");
        break;
      }
      case "message":
        log("Sender: " + String(data.text).slice(0, 500), "message");
        announce("Message from the sender: " + String(data.text).slice(0, 500));
        break;
      case "ping":
        conn.send({ type: "pong", t: data.t });
        break;
      default:
        break;
    }
  }

  /* A sender that vanished without closing (crash, cable) frees the place. */
  setInterval(() => {
    if (sender && Date.now() - lastHeard > SILENT_MS) drop(sender, "went silent");
  }, 1000);

  /* --- signaling -------------------------------------------------------- */

  const signaling = new Cue.Signaling(cfg, {
    token,
    wantedId: () => wantedId,
    onOpen(id) {
      takenCount = 0;
      wantedId = id;
      if (persistId) store.set(STORE_ID, id);
      showIdentity(id);
      Cue.banner("signaling", null);
      updateStatus();
      log("Ready as " + id, "ok");
    },
    onDown(refusal, delay) {
      Cue.signalingDown(refusal, delay);
    },
    onHalt(why) {
      Cue.signalingHalted(why);
      log(why, "warn");
    },
    onError(err) {
      if (err.type === "unavailable-id") {
        // The holder may be a ghost the server has not reaped yet (a dead
        // worker's registration): retry a few times before giving the id up.
        // After that another machine really holds it: take a fresh one.
        takenCount += 1;
        if (takenCount < 5) {
          log("ID " + wantedId + " is held elsewhere; retrying", "warn");
        } else {
          log("ID " + wantedId + " is in use elsewhere; taking a new ID", "warn");
          takenCount = 0;
          wantedId = null;
          store.set(STORE_ID, null);
          setTimeout(() => signaling.renew(), 0);
        }
      } else if (err.type !== "network" && err.type !== "peer-unavailable") {
        log("Signaling error: " + err.type + (err.message ? " (" + err.message + ")" : ""), "warn");
      }
    },
    onConnection(conn) {
      if (busy(conn)) refuse(conn);
      else adopt(conn);
    },
  });

  /* --- the messenger ---------------------------------------------------- */

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value.trim();
    if (!text) return;
    if (!sender || !sender.open) {
      log("Not sent (no sender connected): " + text, "warn");
      return;
    }
    sender.send({ type: "message", text });
    log("You: " + text, "message");
    ui.message.value = "";
  });
  ui.clear.addEventListener("click", () => ui.log.replaceChildren());

  /* Another tab of this browser may already be this receiver: then this tab
   * takes a fresh id, or the two would keep taking the id from each other. */
  function claim(done) {
    if (!wantedId || typeof BroadcastChannel === "undefined") return done();
    const channel = new BroadcastChannel("cue-receiver");
    let answered = false;
    channel.onmessage = (event) => {
      const msg = event.data || {};
      if (msg.type === "mine" && msg.id === wantedId && !signaling.id) answered = true;
      if (msg.type === "who" && signaling.id && msg.id === signaling.id) channel.postMessage({ type: "mine", id: msg.id });
    };
    channel.postMessage({ type: "who", id: wantedId });
    setTimeout(() => {
      if (answered) {
        log("ID " + wantedId + " is open in another tab; this tab takes a new ID", "warn");
        wantedId = null;
        persistId = false;
      }
      done();
    }, 250);
  }

  show("standby");
  Cue.status("Connecting to the signaling server…", "starting");
  claim(() => signaling.start());
})();
