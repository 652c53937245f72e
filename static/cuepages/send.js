/* The sender: connects to one or more receivers, fires cues at them and shows
 * whether each cue was acknowledged, with its round-trip time. Links that
 * drop are redialled on their own; a receiver's refusal is final. */
"use strict";

(() => {
  const cfg = Cue.config();
  const $ = Cue.byId;
  const ui = {
    form: $("connect-form"),
    input: $("receiver-id"),
    list: $("receivers"),
    target: $("target"),
    result: $("cue-result"),
    log: $("log"),
    messageForm: $("message-form"),
    message: $("message"),
    clear: $("clear-log"),
  };
  const CUES = { reset: "Reset", go: "Go", fade: "Fade", off: "Off" };
  const KEYS = { r: "reset", g: "go", f: "fade", o: "off" };
  const ACK_TIMEOUT_MS = 2000;
  const OPEN_TIMEOUT_MS = 10000;
  const PING_MS = 2000;
  const SILENT_MS = 6000;

  const receivers = new Map(); // id -> entry, in the order they were added
  const cues = new Map(); // seq -> {cue, sentAt: Map(id -> ms), results: Map(id -> rtt|null), timer}
  let seq = 0;
  const params = new URLSearchParams(location.search);
  let autoCommand = null;
  const wanted = (params.get("command") || "").toLowerCase();
  if (wanted) {
    if (Object.prototype.hasOwnProperty.call(CUES, wanted)) autoCommand = wanted;
    else Cue.log(ui.log, "Unknown ?command=" + params.get("command") + " (use Go, Fade, Off or Reset)", "warn");
  }

  function log(text, kind) {
    Cue.log(ui.log, text, kind);
  }

  /* --- receivers ----------------------------------------------------------- */

  const STATES = {
    waiting: "waiting for the signaling server",
    connecting: "connecting…",
    open: "connected",
    down: "link down: reconnecting…",
    refused: "refused",
  };

  function render(entry) {
    entry.item.dataset.state = entry.state;
    entry.stateText.textContent = entry.reason || STATES[entry.state];
    updateTargets();
    updateBanner();
    updateStatus();
  }

  /* The header says whether cues can go anywhere: "Ready" (green) unless every
   * receiver added has refused this sender. While the signaling server is away
   * its own status stands (common.js). */
  let myId = null;
  function updateStatus() {
    if (!myId) return;
    const all = Array.from(receivers.values());
    if (all.length && all.every((e) => e.state === "refused")) {
      const why = all.length === 1 ? "Refused by receiver " + all[0].id + ": " + all[0].refusal : "Refused by every receiver";
      Cue.status(why + ". Your ID: " + myId, "down");
    } else {
      Cue.status("Ready. Your ID: " + myId, "ready");
    }
  }

  function setState(entry, state, reason) {
    entry.state = state;
    entry.reason = reason || "";
    render(entry);
  }

  function updateTargets() {
    const chosen = ui.target.value;
    const options = [new Option("all connected receivers", "*")];
    for (const entry of receivers.values()) {
      const option = new Option(entry.id + (entry.state === "open" ? "" : " (" + STATES[entry.state] + ")"), entry.id);
      options.push(option);
    }
    ui.target.replaceChildren(...options);
    ui.target.value = receivers.has(chosen) ? chosen : "*";
  }

  function updateBanner() {
    const down = Array.from(receivers.values()).filter((e) => e.state === "down" || (e.state === "connecting" && e.wasOpen));
    Cue.banner(
      "receivers",
      down.length ? "Link to receiver " + down.map((e) => e.id).join(", ") + " is down: reconnecting…" : null
    );
  }

  function addReceiver(id) {
    if (receivers.has(id)) {
      const entry = receivers.get(id);
      if (entry.state !== "open") {
        entry.refused = false;
        entry.attempt = 0;
        dial(entry);
      }
      return;
    }
    const item = document.createElement("li");
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.setAttribute("aria-hidden", "true");
    const name = document.createElement("span");
    name.className = "receiver-name";
    Cue.showId(name, id);
    const stateText = document.createElement("span");
    stateText.className = "receiver-state";
    const lastCue = document.createElement("span");
    lastCue.className = "receiver-last-cue";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small";
    remove.textContent = "Disconnect";
    item.dataset.id = id;
    item.append(dot, name, stateText, lastCue, remove);
    ui.list.append(item);
    const entry = { id, item, stateText, lastCue, state: "connecting", reason: "", conn: null, attempt: 0, timer: null, openTimer: null, lastHeard: 0, wasOpen: false, refused: false, removed: false };
    remove.addEventListener("click", () => removeReceiver(entry));
    receivers.set(id, entry);
    dial(entry);
  }

  function removeReceiver(entry) {
    entry.removed = true;
    clearTimeout(entry.timer);
    clearTimeout(entry.openTimer);
    const conn = entry.conn;
    entry.conn = null;
    if (conn) conn.close();
    receivers.delete(entry.id);
    entry.item.remove();
    log("Disconnected from receiver " + entry.id, "info");
    updateTargets();
    updateBanner();
    updateStatus();
  }

  function dial(entry) {
    clearTimeout(entry.timer);
    entry.timer = null;
    if (entry.removed || entry.refused) return;
    if (!signaling.open) {
      setState(entry, entry.wasOpen ? "down" : "waiting");
      return; // dialled again when the signaling server is back
    }
    if (entry.conn) {
      const old = entry.conn;
      entry.conn = null;
      old.close();
    }
    const conn = signaling.peer.connect(entry.id, { reliable: true });
    entry.conn = conn;
    setState(entry, "connecting");
    clearTimeout(entry.openTimer);
    entry.openTimer = setTimeout(() => fail(entry, conn, "did not answer"), OPEN_TIMEOUT_MS);
    conn.on("open", () => {
      if (conn !== entry.conn) return;
      clearTimeout(entry.openTimer);
      entry.attempt = 0;
      entry.lastHeard = Date.now();
      entry.wasOpen = true;
      setState(entry, "open");
      log("Connected to receiver " + entry.id, "ok");
      if (autoCommand) {
        const cue = autoCommand;
        autoCommand = null;
        fire(cue);
      }
    });
    conn.on("data", (data) => {
      if (conn === entry.conn) receive(entry, data);
    });
    conn.on("close", () => fail(entry, conn, "link lost"));
    conn.on("error", (err) => fail(entry, conn, "link failed (" + (err.type || err.message || err) + ")"));
  }

  function fail(entry, conn, why) {
    if (conn !== entry.conn || entry.removed) return;
    entry.conn = null;
    clearTimeout(entry.openTimer);
    conn.close();
    if (entry.refused) return;
    const delay = Cue.backoff(entry.attempt++);
    if (entry.wasOpen || entry.attempt === 1) log("Receiver " + entry.id + ": " + why + "; retrying in " + Math.ceil(delay / 1000) + " s", "warn");
    setState(entry, entry.wasOpen ? "down" : "connecting", entry.wasOpen ? "" : why + ": retrying…");
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => dial(entry), delay);
  }

  function receive(entry, data) {
    entry.lastHeard = Date.now();
    if (typeof data === "string") {
      log(entry.id + ": " + data.slice(0, 500), "message");
      return;
    }
    if (!data || typeof data !== "object") return;
    switch (data.type) {
      case "ack":
        acknowledged(entry, data.seq);
        break;
      case "message":
        log(entry.id + ": " + String(data.text).slice(0, 500), "message");
        break;
      case "refused": {
        const reason = String(data.reason || "refused").slice(0, 200);
        entry.refused = true;
        entry.refusal = reason;
        const conn = entry.conn;
        entry.conn = null;
        clearTimeout(entry.openTimer);
        if (conn) conn.close();
        setState(entry, "refused", "refused: " + reason);
        log("Receiver " + entry.id + " refused the connection: " + reason, "error");
        break;
      }
      default:
        break;
    }
  }

  /* Keep the links warm and notice a receiver that vanished without closing. */
  setInterval(() => {
    for (const entry of receivers.values()) {
      if (entry.state !== "open" || !entry.conn) continue;
      if (Date.now() - entry.lastHeard > SILENT_MS) fail(entry, entry.conn, "went silent");
      else entry.conn.send({ type: "ping", t: Date.now() });
    }
  }, PING_MS);

  /* --- cues ---------------------------------------------------------------- */

  function targets() {
    const chosen = ui.target.value;
    const all = chosen === "*" ? Array.from(receivers.values()) : [receivers.get(chosen)].filter(Boolean);
    return all;
  }

  function fire(cue) {
    const name = CUES[cue];
    const chosen = targets();
    const open = chosen.filter((e) => e.state === "open" && e.conn && e.conn.open);
    if (open.length === 0) {
      ui.result.dataset.state = "failed";
      ui.result.textContent = name + ": NOT delivered (no receiver connected)";
      log(name + " NOT delivered: no receiver connected", "error");
      return;
    }
    const number = ++seq;
    const record = { cue, sentAt: new Map(), results: new Map(), missed: chosen.filter((e) => !open.includes(e)).map((e) => e.id) };
    cues.set(number, record);
    for (const entry of open) {
      record.sentAt.set(entry.id, performance.now());
      entry.conn.send({ type: "cue", cue, seq: number });
      entry.lastCue.textContent = name + " sent…";
    }
    ui.result.dataset.state = "pending";
    ui.result.textContent = name + ": sent, waiting for acknowledgement…";
    record.timer = setTimeout(() => finish(number), ACK_TIMEOUT_MS);
  }

  function acknowledged(entry, number) {
    const record = cues.get(number);
    if (!record || !record.sentAt.has(entry.id) || record.results.has(entry.id)) return;
    const rtt = Math.max(0, Math.round(performance.now() - record.sentAt.get(entry.id)));
    record.results.set(entry.id, rtt);
    entry.lastCue.textContent = CUES[record.cue] + " ✓ " + rtt + " ms";
    log(CUES[record.cue] + " delivered to " + entry.id + " in " + rtt + " ms", "ok");
    if (record.results.size === record.sentAt.size) finish(number);
  }

  function finish(number) {
    const record = cues.get(number);
    if (!record) return;
    clearTimeout(record.timer);
    cues.delete(number);
    const name = CUES[record.cue];
    const missed = record.missed.slice();
    for (const id of record.sentAt.keys()) {
      if (!record.results.has(id)) {
        missed.push(id);
        const entry = receivers.get(id);
        if (entry) entry.lastCue.textContent = name + " ✗ not delivered";
        log(name + " NOT delivered to " + id + " (no acknowledgement)", "error");
      }
    }
    for (const id of record.missed) log(name + " NOT delivered to " + id + " (link down)", "error");
    const rtts = Array.from(record.results.values());
    const total = rtts.length + missed.length;
    if (missed.length === 0) {
      ui.result.dataset.state = "delivered";
      ui.result.textContent =
        total === 1
          ? name + ": delivered in " + rtts[0] + " ms"
          : name + ": delivered to all " + total + " receivers (slowest " + Math.max(...rtts) + " ms)";
    } else {
      ui.result.dataset.state = "failed";
      ui.result.textContent =
        name + ": NOT delivered to " + missed.join(", ") + (rtts.length ? " (delivered to " + rtts.length + " of " + total + ")" : "");
    }
  }

  for (const button of document.querySelectorAll(".cue-button[data-cue]")) {
    button.addEventListener("click", () => fire(button.dataset.cue));
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const cue = KEYS[event.key.toLowerCase()];
    if (!cue) return;
    event.preventDefault();
    const button = document.querySelector('.cue-button[data-cue="' + cue + '"]');
    button.classList.add("pressed");
    setTimeout(() => button.classList.remove("pressed"), 150);
    fire(cue);
  });

  /* --- signaling ----------------------------------------------------------- */

  const signaling = new Cue.Signaling(cfg, {
    token: Cue.randomToken(),
    onOpen(id) {
      Cue.banner("signaling", null);
      myId = id;
      updateStatus();
      for (const entry of receivers.values()) {
        if (!entry.conn && !entry.refused && (entry.state === "waiting" || entry.state === "down")) dial(entry);
      }
    },
    onDown(refusal, delay) {
      myId = null;
      Cue.signalingDown(refusal, delay);
    },
    onHalt(why) {
      myId = null;
      Cue.signalingHalted(why);
      log(why, "warn");
    },
    onError(err) {
      if (err.type === "peer-unavailable") {
        // The server answered EXPIRE: nobody holds that id (yet).
        const id = String(err.message || "").replace(/^Could not connect to peer /, "");
        const entry = receivers.get(id);
        if (entry && entry.conn) fail(entry, entry.conn, "no receiver with this ID is online");
      } else if (err.type !== "network") {
        log("Signaling error: " + err.type + (err.message ? " (" + err.message + ")" : ""), "warn");
      }
    },
    onConnection(conn) {
      log("Refused an incoming connection from " + conn.peer + ": a sender only makes connections", "warn");
      conn.on("open", () => {
        conn.send({ type: "refused", reason: "This is a sender: it does not accept incoming connections" });
        setTimeout(() => conn.close(), 1000);
      });
    },
  });

  /* --- the form and the messenger ---------------------------------------- */

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = ui.input.value.trim();
    if (!Cue.isPeerId(id, cfg.idMaxLength)) {
      log("“" + id + "” is not a receiver ID", "error");
      return;
    }
    ui.input.value = "";
    addReceiver(id);
  });

  ui.messageForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value.trim();
    if (!text) return;
    const open = targets().filter((e) => e.state === "open" && e.conn && e.conn.open);
    if (open.length === 0) {
      log("Not sent (no receiver connected): " + text, "warn");
      return;
    }
    for (const entry of open) entry.conn.send({ type: "message", text });
    log("You: " + text, "message");
    ui.message.value = "";
  });
  ui.clear.addEventListener("click", () => ui.log.replaceChildren());

  Cue.status("Connecting to the signaling server…", "starting");
  signaling.start();
  const preset = params.get("id");
  if (preset) {
    if (Cue.isPeerId(preset, cfg.idMaxLength)) addReceiver(preset);
    else log("“" + preset + "” is not a receiver ID", "error");
  }
})();
