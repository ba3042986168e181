// idlewatch dashboard: the websocket snapshot, then live changes; no framework, no CDN.
"use strict";
(function () {
  const TOKEN_KEY = "idlewatch-token";
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const agents = new Map();
  let groups = new Map(); // group name -> Set of member names (GET /api/groups)
  const $ = (sel) => document.querySelector(sel);
  let socket = null;
  let health = null; // readiness from the feed: {ready, reasons, checks}
  let retryDelay = 1000;
  let retryTimer = null;
  let loaded = false; // a snapshot arrived on this connection
  let scopes = new Set(); // what the token may do (GET /api/scopes): controls follow it

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }
  function setConn(state, text) {
    const el = $("#conn");
    el.dataset.state = state;
    el.textContent = text || state;
  }
  function say(text) { $("#message").textContent = text || ""; }

  // "live" only while the feed is open AND idlewatch sees the engine: with the engine
  // unreachable the table is what was last known, and an empty one means nothing.
  function showHealth() {
    const down = health && health.checks.engine_reachable === false;
    const syncing = health && !down && !health.checks.events_stream;
    if (socket && socket.readyState === WebSocket.OPEN) {
      if (down) setConn("engine-down", "engine unreachable");
      else if (syncing) setConn("degraded", "syncing with the engine");
      else if (health && !health.ready) setConn("degraded", "degraded");
      else setConn("live");
    }
    const why = health && !health.ready ? health.reasons.join("; ") : "";
    $("#health").hidden = !why;
    $("#health").textContent = why ? "idlewatch is not ready: " + why : "";
    $("#empty").textContent = down
      ? "The Docker engine is unreachable, so idlewatch cannot list the agents; they show here once it answers."
      : "No managed agents yet. Label a container or service with the management label.";
  }

  function human(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function clock(iso) {
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  function idleIn(a, now) {
    if (a.idle_timeout === null) return "never";
    if (!["running", "starting", "restarting"].includes(a.status)) return "—";
    if (a.attached_since) return "attached since " + clock(a.attached_since);
    if (a.sessions > 0) return "in use";
    if (a.keep_until && Date.parse(a.keep_until) > now) {
      return "kept " + human((Date.parse(a.keep_until) - now) / 1000);
    }
    const left = a.idle_timeout - (now - Date.parse(a.last_activity)) / 1000;
    return left <= 0 ? "due" : human(left);
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }
  function button(name, action, label, enabled) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.action = action;
    b.textContent = label;
    b.disabled = !enabled;
    b.addEventListener("click", () => act(name, action));
    return b;
  }
  // what each control can do to an agent in its status (the server refuses the rest too)
  const GONE = ["removed", "error"];
  function asleep(a) {
    return a.kind === "service" ? a.replicas === 0
      : ["exited", "created", "dead", "paused"].includes(a.status);
  }
  function awake(a) {
    return a.kind === "service" ? a.replicas > 0 && !GONE.includes(a.status)
      : ["running", "restarting", "paused"].includes(a.status);
  }
  // a stop asks once more: the first click arms the button for a few seconds
  function stopButton(a) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.action = "stop";
    b.disabled = !awake(a);
    const armed = armedStop.get(a.name);
    b.textContent = armed && armed > Date.now() ? "Confirm stop" : "Stop";
    b.addEventListener("click", () => {
      const until = armedStop.get(a.name);
      if (until && until > Date.now()) {
        armedStop.delete(a.name);
        act(a.name, "stop");
      } else {
        armedStop.set(a.name, Date.now() + 4000);
        say("Click Confirm stop to stop " + a.name + ".");
        render();
      }
    });
    return b;
  }
  const armedStop = new Map(); // agent name -> until when its Stop button is armed

  function render() {
    const tbody = $("#agents tbody");
    const filter = $("#filter").value.trim().toLowerCase();
    const group = $("#group").value;
    const members = group ? groups.get(group) || new Set() : null;
    const now = Date.now();
    const rows = [];
    for (const a of [...agents.values()].sort((x, y) => x.name.localeCompare(y.name))) {
      const hay = (a.name + " " + a.kind + " " + a.status).toLowerCase();
      if (filter && !hay.includes(filter)) continue;
      if (members && !members.has(a.name)) continue;
      const tr = document.createElement("tr");
      tr.dataset.name = a.name;
      const nameCell = cell("", "name");
      const open = document.createElement("a");
      open.className = "open";
      open.href = "#agent=" + encodeURIComponent(a.name);
      open.textContent = a.name;
      nameCell.appendChild(open);
      tr.appendChild(nameCell);
      tr.appendChild(cell(a.kind));
      const st = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.dataset.status = a.status;
      badge.textContent = a.status;
      if (a.error) badge.title = a.error;
      st.appendChild(badge);
      if (a.sessions > 0) {  // open exec or attach sessions: never idle while they last
        const use = document.createElement("span");
        use.className = "badge in-use";
        use.dataset.status = "in-use";
        use.textContent = "in use (" + a.sessions + ")";
        if (a.attached_since) use.title = "attached since " + new Date(a.attached_since).toLocaleString();
        st.append(" ", use);
      }
      tr.appendChild(st);
      tr.appendChild(cell(a.running + " / " + a.replicas));
      tr.appendChild(cell(human((now - Date.parse(a.last_activity)) / 1000) + " ago"));
      tr.appendChild(cell(idleIn(a, now), "idle-in"));
      const actions = document.createElement("td");
      if (scopes.has("control")) actions.append(button(a.name, "start", "Start", asleep(a)), stopButton(a));
      if (scopes.has("touch")) actions.append(button(a.name, "activity", "Touch", !GONE.includes(a.status)));
      tr.appendChild(actions);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    renderDetail();
    // "no agents" only once a snapshot said so (never behind the token prompt)
    $("#empty").hidden = !loaded || agents.size !== 0;
  }

  async function act(name, action, body) {
    say(action + " " + name + "…");
    try {
      const init = { method: "POST", headers: headers() };
      if (body) {
        init.headers = Object.assign({ "Content-Type": "application/json" }, headers());
        init.body = JSON.stringify(body);
      }
      const r = await fetch(base + "api/agents/" + encodeURIComponent(name) + "/" + action, init);
      const answer = await r.json().catch(() => null);
      if (!r.ok) {
        say((answer && answer.error ? answer.error.message : "HTTP " + r.status) + " (" + action + " " + name + ")");
        if (r.status === 401) askToken(true);
        return;
      }
      agents.set(answer.name, answer);
      render();
      say("");
      refreshSoon();
    } catch (e) {
      say("could not reach idlewatch: " + e);
    }
  }

  function askToken(rejected) {
    loaded = false;
    render();
    setConn("unauthorized", rejected ? "token rejected" : "token needed");
    $("#auth").hidden = false;
    $("#auth-error").textContent = rejected
      ? "The token was rejected. Enter the api_token (or read_token) idlewatch was started with."
      : "This idlewatch requires an API token.";
    $("#token").focus();
  }

  async function connect() {
    clearTimeout(retryTimer);
    setConn(agents.size ? "reconnecting" : "connecting");
    let probe;
    try {
      probe = await fetch(base + "api/agents", { headers: headers() });
    } catch (e) {
      return retry();
    }
    if (probe.status === 401 || probe.status === 403) return askToken(Boolean(token()));
    if (!probe.ok) return retry();
    $("#auth").hidden = true;
    try {
      const r = await fetch(base + "api/scopes", { headers: headers() });
      scopes = new Set(r.ok ? (await r.json()).scopes : []);
    } catch (e) {
      return retry();
    }
    const url = new URL(base + "api/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (token()) {
      // a one-use ticket, never the token, in the URL (where access logs keep it)
      try {
        const r = await fetch(base + "api/feed-tickets", { method: "POST", headers: headers() });
        if (!r.ok) return retry();
        url.searchParams.set("ticket", (await r.json()).ticket);
      } catch (e) {
        return retry();
      }
    }
    socket = new WebSocket(url);
    socket.onopen = () => { retryDelay = 1000; showHealth(); };
    socket.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "snapshot") {
        loaded = true;
        agents.clear();
        for (const a of msg.agents) agents.set(a.name, a);
        health = msg.health || null;
        showHealth();
        loadGroups();
        loadStats();
      } else if (msg.type === "change") {
        if (!agents.has(msg.agent.name)) loadGroups();
        agents.set(msg.agent.name, msg.agent);
        refreshSoon(msg.agent.name);
      } else if (msg.type === "health") {
        health = msg;
        showHealth();
      }
      render();
    };
    socket.onclose = () => { socket = null; retry(); };
  }

  // groups change with labels only: read them at connect, and when an agent appears
  async function loadGroups() {
    try {
      const r = await fetch(base + "api/groups", { headers: headers() });
      if (!r.ok) return;
      groups = new Map((await r.json()).map((g) => [g.name, new Set(g.members.map((m) => m.name))]));
    } catch (e) {
      return;
    }
    const select = $("#group");
    const chosen = select.value;
    const options = [new Option("all groups", "")];
    for (const name of [...groups.keys()].sort()) options.push(new Option(name, name));
    select.replaceChildren(...options);
    select.value = groups.has(chosen) ? chosen : "";
    select.hidden = groups.size === 0 && !chosen;
    render();
  }

  function retry() {
    setConn("reconnecting", "reconnecting in " + Math.round(retryDelay / 1000) + "s");
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  }

  $("#auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    connect();
  });
  // ------------------------------------------------------------ the summary and chart
  let stats = null;
  let statsTimer = null; // a refresh is due (throttle)
  let timelineFor = null; // the agent whose timeline is shown
  let timeline = [];
  let shown = {}; // what the detail view was last built from
  let timelineStale = false;
  function refreshSoon(name) {
    // a change: the figures (and the open timeline, when the change is its agent's)
    // follow within two seconds: at most one fetch each per two seconds, however busy
    if (name === undefined || name === detailName()) timelineStale = true;
    if (statsTimer !== null) return;
    statsTimer = setTimeout(() => {
      statsTimer = null;
      loadStats();
      if (timelineStale && detailName()) loadTimeline(detailName());
      timelineStale = false;
    }, 2000);
  }
  async function loadStats() {
    try {
      const r = await fetch(base + "api/stats?window=" + $("#window").value, { headers: headers() });
      if (!r.ok) return;
      stats = await r.json();
    } catch (e) {
      return;
    }
    renderSummary();
  }
  function renderSummary() {
    if (!stats) return;
    const counts = Object.entries(stats.agents).filter(([, n]) => n > 0)
      .map(([st, n]) => n + " " + st).join(", ");
    $("#sum-counts").textContent = counts || "none";
    $("#sum-awake").textContent = stats.awake_now + (stats.max_awake !== null ? " / " + stats.max_awake : "");
    $("#sum-saved").textContent = stats.saved_agent_hours.toFixed(1);
    $("#sum-wakes").textContent = String(stats.wakes.count);
    const p95 = stats.wakes.total_ms.p95;
    $("#sum-p95").textContent = p95 === null ? "-" : Math.round(p95) + " ms";
    drawChart(stats.series);
  }
  function drawChart(series) {
    const svg = $("#chart");
    const W = 600, H = 120, top = 6, bottom = 6;
    const max = Math.max(1, ...series.map((p) => Math.max(p.awake, p.paused)));
    const x = (i) => (series.length < 2 ? W : (i / (series.length - 1)) * W);
    const y = (v) => top + (1 - v / max) * (H - top - bottom);
    const line = (key) => series.map((p, i) => x(i).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ");
    const ns = "http://www.w3.org/2000/svg";
    const el = (tag, attrs) => {
      const e = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      return e;
    };
    svg.replaceChildren(
      el("polyline", { class: "awake", points: line("awake") }),
      el("polyline", { class: "paused", points: line("paused") }),
    );
    $("#chart-span").textContent = stats ? "since " + new Date(stats.since).toLocaleString() : "";
    $("#chart-max").textContent = String(max);
  }

  // ------------------------------------------------------------------ the detail view
  function detailName() {
    const m = location.hash.match(/^#agent=(.+)$/);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (e) {
      return null; // a malformed address: no detail view
    }
  }
  async function loadTimeline(name) {
    try {
      const r = await fetch(base + "api/agents/" + encodeURIComponent(name) + "/timeline?limit=30",
                            { headers: headers() });
      timeline = r.ok ? (await r.json()).entries : [];
    } catch (e) {
      timeline = [];
    }
    timelineFor = name;
    renderDetail();
  }
  function li(text) {
    const e = document.createElement("li");
    e.textContent = text;
    return e;
  }
  function entryText(e) {
    const when = new Date(e.at).toLocaleString();
    if (e.kind === "use") return when + " — used via " + e.source + " ×" + e.count;
    if (e.kind === "wake") {
      const ph = Object.entries(e.phases || {}).map(([k, v]) => k + " " + v + " ms").join(", ");
      return when + " — woken from " + e.from + (e.ready ? "" : " (not ready in time)") + ": " + ph;
    }
    if (e.kind === "status") return when + " — became " + e.status + (e.actor === "sweep" ? " (idle action)" : "");
    if (e.kind === "skip") return when + " — idle action skipped: " + e.reason;
    return when + " — " + e.kind + ": " + (e.action || "") + " by " + e.actor + " (" + e.reason + ")";
  }
  function renderDetail() {
    const name = detailName();
    const a = name ? agents.get(name) : null;
    $("#detail").hidden = !a;
    if (!a) return;
    if (timelineFor !== name) { timelineFor = name; timeline = []; loadTimeline(name); }
    const n = a.next_action || { action: "none", at: null, reason: "" };
    $("#detail-next").textContent = n.action === "none" ? "none — " + n.reason
      : n.action + " at " + new Date(n.at).toLocaleString() + " (in " +
        human((Date.parse(n.at) - Date.now()) / 1000) + ") — " + n.reason;
    // the timeline only when it changed; the rest only when the agent did (the controls
    // keep their focus)
    if (shown.timeline !== timeline) {
      shown.timeline = timeline;
      $("#detail-timeline").replaceChildren(...(timeline.length ? timeline.map((e) => li(entryText(e)))
                                                                 : [li("nothing recorded yet")]));
    }
    const until = armedStop.get(a.name);
    const armed = Boolean(until && until > Date.now());
    if (shown.agent === a && shown.armed === armed) return;
    shown.agent = a;
    shown.armed = armed;
    $("#detail-name").textContent = a.name;
    $("#detail-status").textContent = a.status;
    $("#detail-status").dataset.status = a.status;
    const holds = (a.holds || []).map((h) => li(h.kind + ": " + h.detail +
      (h.until ? " (until " + new Date(h.until).toLocaleString() + ")" : "")));
    $("#detail-holds").replaceChildren(...(holds.length ? holds : [li("nothing")]));
    const L = a.labels || {};
    const rows = [
      ["kind", a.kind], ["image", a.image],
      ["idle timeout", a.idle_timeout === null ? "never" : human(a.idle_timeout)],
      ["idle action", L["idlewatch.idle-action"] || "default"],
      ["stop after", L["idlewatch.stop-after"] || "default"],
      ["keep-alive", a.keep_until ? "until " + new Date(a.keep_until).toLocaleString() : "none"],
      ["busy checks", [L["idlewatch.busy-cpu"] && "cpu ≥ " + L["idlewatch.busy-cpu"],
                       L["idlewatch.busy-command"] && "command " + L["idlewatch.busy-command"]]
                       .filter(Boolean).join("; ") || "open sessions only"],
      ["groups", L["idlewatch.group"] || "none"], ["hosts", L["idlewatch.hosts"] || "none"],
      ["ready port", L["idlewatch.ready-port"] || "none"],
      ["labels", Object.entries(L).map(([k, v]) => k + "=" + v).join(", ")],
    ];
    const dl = [];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      dl.push(dt, dd);
    }
    $("#detail-settings").replaceChildren(...dl);
    renderControls(a);
  }
  function renderControls(a) {
    const box = $("#detail-controls");
    const keep = document.createElement("select");
    keep.id = "keep-for";
    keep.setAttribute("aria-label", "keep for");
    for (const [v, label] of [["", "touch now"], ["15m", "keep 15 min"], ["1h", "keep 1 hour"], ["8h", "keep 8 hours"]]) {
      keep.appendChild(new Option(label, v));
    }
    const previous = $("#keep-for");
    if (previous) keep.value = previous.value;
    const touchNow = document.createElement("button");
    touchNow.type = "button";
    touchNow.dataset.action = "activity";
    touchNow.textContent = "Touch";
    touchNow.disabled = GONE.includes(a.status);
    touchNow.addEventListener("click", () => act(a.name, "activity", keep.value ? { keep_for: keep.value } : null));
    const controls = [];
    if (scopes.has("control")) {
      if (asleep(a)) controls.push(button(a.name, "start", "Start", true));
      if (awake(a)) controls.push(stopButton(a));
      if (a.kind === "container" && a.status === "running") controls.push(button(a.name, "pause", "Pause", true));
    }
    if (scopes.has("touch")) controls.push(keep, touchNow);
    box.replaceChildren(...controls);
  }
  window.addEventListener("hashchange", () => { timelineFor = null; shown = {}; renderDetail(); });
  $("#detail-close").addEventListener("click", () => { history.replaceState(null, "", location.pathname); renderDetail(); });
  $("#window").addEventListener("change", loadStats);
  setInterval(loadStats, 30000);

  $("#filter").addEventListener("input", render);
  $("#group").addEventListener("change", render);
  setInterval(render, 1000);
  connect();
})();
