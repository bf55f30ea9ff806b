// The csg console's live updates: one server-sent event stream per page (GET /ui/events);
// each presence change redraws the rows and badges of that gateway, wherever they are on the
// page (rows swapped in by htmx too, as they are looked up when an event comes), and each job
// change its progress. Without JavaScript the pages still read; they are just not live.
(function () {
  "use strict";
  var source = document.querySelector("[data-live]");
  if (!source || !window.EventSource) { return; }
  // The stream's state, said in the table's caption. The caption is looked up each time and
  // said again after htmx swaps the table (a sort, a filter, a page): the new one comes from
  // the server saying "live updates off", while this page's stream goes on.
  var state = null;
  function say(text) {
    state = text;
    var live = document.getElementById("live");
    if (live) { live.textContent = text; }
  }
  document.body.addEventListener("htmx:afterSettle", function () { if (state) { say(state); } });
  var es = new EventSource(source.getAttribute("data-live"));
  es.onopen = function () { say("live"); document.body.setAttribute("data-live-open", "1"); };
  // Once the stream has broken, a gateway without "from" may be one a restarted service hears
  // of again, not a new one: from then on they are neither counted nor said new.
  var interrupted = false;
  es.onerror = function () { interrupted = true; say("live updates reconnecting…"); document.body.removeAttribute("data-live-open"); };
  // A presence change redraws every row and badge of that gateway; a fleet row is marked
  // again (see `mark`), and a gateway the view lacks is forgotten once its presence is not the
  // filter's.
  function apply(e) {
    var nodes = document.querySelectorAll("[data-gw]");
    for (var i = 0; i < nodes.length; i++) {
      var n = nodes[i];
      if (n.getAttribute("data-gw") !== e.key) { continue; }
      var badge = n.hasAttribute("data-presence-badge") ? n : n.querySelector("[data-presence]");
      if (badge) { badge.textContent = e.to; badge.className = "presence p-" + e.to; }
      var since = n.querySelector("[data-since]");
      if (since) { since.textContent = e.since; since.title = e.since_utc; }
      n.setAttribute("data-state", e.to);
      if (n.matches("#fleet tr")) { mark(n); }
    }
    var w = wanted();
    if (w && e.to !== w) {
      delete extra[e.key];
      if (fresh[e.key]) { delete fresh[e.key]; freshN -= 1; }
    }
  }
  function shown(key) {
    var rows = document.querySelectorAll("#fleet tr[data-gw]");
    for (var i = 0; i < rows.length; i++) { if (rows[i].getAttribute("data-gw") === key) { return true; } }
    return false;
  }
  // Presence changes met while a refresh of the rows is on its way: applied again to the rows
  // it brings, which the server may have read before them.
  var missed = null;
  // The page's view (its filter, order and page) changes under its rows: a gateway goes
  // offline on a page filtered to `online`, a new one sorts in. The table stays as loaded, so
  // it does not move under the reader; what differs is said instead:
  // - a row the last refresh's answer lacks (it no longer matches the filter, or moved off
  //   this page in its order), or whose presence is no longer the filter's, is marked "no
  //   longer in this view" (a note in its row header, which a screen reader reads with the
  //   row, and the row dimmed), and unmarked once an answer has it again;
  // - gateways in that answer that the table lacks, and gateways new to the console (a
  //   presence event without "from") that the page does not show and whose region, id, group
  //   and presence match the filter (the version and drift are not known before a gateway's
  //   first heartbeat: not checked), are counted in the polite live region above the table,
  //   with the marked rows and a link to the view loaded again. A gateway is counted once
  //   (new, if it is both).
  var notice = document.getElementById("new-gateways");
  var fresh = {}, freshN = 0, extra = {}, told = "";
  function here() { return window.location.href.split("#")[0]; }
  function wanted() { return new URLSearchParams(window.location.search).get("presence") || ""; }
  function matches(e) {
    var q = new URLSearchParams(window.location.search);
    var at = e.key.indexOf("/"), region = e.key.slice(0, at), id = e.key.slice(at + 1);
    if (q.get("presence") && q.get("presence") !== e.to) { return false; }
    if (q.get("q") && id.indexOf(q.get("q")) < 0) { return false; }
    if (q.get("region") && q.get("region") !== region) { return false; }
    if (q.get("group") && q.get("group") !== e.group) { return false; }
    return true;
  }
  var GONE = "no longer in this view";
  function mark(row) {
    var badge = row.querySelector("[data-presence]"), w = wanted();
    var out = row.hasAttribute("data-absent") || (!!w && !!badge && badge.textContent.trim() !== w);
    var note = row.querySelector(".gone-note"), head = row.firstElementChild;
    if (out === !!note || !head) { return; }
    if (out) {
      row.classList.add("gone");
      row.title = "No longer in this view: it no longer matches the filter, or it moved off this page in its order";
      note = document.createElement("span");
      note.className = "gone-note";
      note.textContent = GONE;
      head.appendChild(document.createTextNode(" "));
      head.appendChild(note);
    } else {
      row.classList.remove("gone");
      row.removeAttribute("title");
      if (note.previousSibling && note.previousSibling.nodeType === 3) { note.previousSibling.remove(); }
      note.remove();
    }
  }
  // The notice is written only when its text changes: a live region says again what is
  // written into it.
  function tell() {
    if (!notice) { return; }
    var now = 0, gone = document.querySelectorAll("#fleet tr.gone").length, parts = [];
    for (var k in extra) { if (!fresh[k]) { now += 1; } }
    if (freshN > 0) { parts.push(freshN + (freshN === 1 ? " new gateway" : " new gateways") + " since this page was loaded."); }
    if (now > 0) { parts.push(now + (now === 1 ? " gateway now matches this view and is not shown." : " gateways now match this view and are not shown.")); }
    if (gone > 0) { parts.push(gone + (gone === 1 ? " gateway shown no longer matches this view." : " gateways shown no longer match this view.")); }
    var text = parts.join(" ");
    if (text === told) { return; }
    told = text;
    notice.textContent = "";
    if (!text) { return; }
    var p = document.createElement("p");
    p.className = "flash ok";
    p.appendChild(document.createTextNode(text + " "));
    var a = document.createElement("a");
    a.id = "new-gateways-link";
    a.href = here();
    a.textContent = "Show the current rows";
    p.appendChild(a);
    notice.appendChild(p);
  }
  function noteNew(e) {
    if (!notice || e.from || interrupted || fresh[e.key] || shown(e.key) || !matches(e)) { return; }
    fresh[e.key] = true;
    freshN += 1;
  }
  // A filter or a page swapped in by htmx is a view loaded now: nothing differs yet.
  // (Before the swap: a pager link that asked is gone after it, and its events with it.)
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var d = ev.detail;
    if (!notice || !d || d.shouldSwap === false || !d.target || d.target.id !== "fleet") { return; }
    fresh = {}; freshN = 0; extra = {}; told = ""; notice.textContent = "";
  });
  es.addEventListener("presence", function (m) {
    var e;
    try { e = JSON.parse(m.data); } catch (err) { return; }
    apply(e);
    if (missed) { missed.push(e); }
    noteNew(e);
    tell();
    // The fleet's counts follow, when the gateway is in the region they are of; a gateway new
    // to the console (no "from") adds to the total and its state.
    var bump = function (id, by) {
      var n = document.getElementById("n-" + id);
      if (n) { n.textContent = String(Math.max(0, parseInt(n.textContent, 10) + by)); }
    };
    var region = new URLSearchParams(window.location.search).get("region");
    var ours = !region || e.key.indexOf(region + "/") === 0;
    if (ours && e.from && e.from !== e.to) {
      if (document.getElementById("n-" + e.from) && document.getElementById("n-" + e.to)) {
        bump(e.from, -1);
        bump(e.to, 1);
      }
    } else if (ours && !e.from && !interrupted && document.getElementById("n-total")) {
      bump("total", 1);
      bump(e.to, 1);
    }
    // The gateway page: its identity section too.
    var badge = document.querySelector("[data-presence-badge]");
    if (badge && badge.getAttribute("data-gw") === e.key) {
      var text = document.querySelector("[data-presence-text]");
      if (text) { text.textContent = e.to; }
      var since = document.querySelector("dd [data-since]");
      if (since) { since.textContent = e.since; since.title = e.since_utc; }
    }
  });
  // The fleet's rows stay current (last seen, version, resources, drift): every 5 s while the
  // tab is shown, the page asks for its own URL again (the same filter, page and order: every
  // parameter it has) with `x-fleet-rows: 1`, and the server answers the rows alone, without
  // the counts (most of a page's time; presence moves them from the events). Each row takes
  // the cells of its gateway from the answer, but the first (its link, which never changes and
  // may hold the focus); rows are neither added nor removed, so the table does not move under
  // the reader: rows the answer lacks are marked, and its rows the table lacks are counted
  // above it (see `mark` and `tell`). A view with no row yet ("No gateway matches this
  // filter") is asked for too: gateways may come to match it. Paused while the pointer, the
  // focus or a selection is in the table, while the filter is being typed or htmx is loading a
  // view, and while the tab is hidden (shown again: at once).
  var EVERY = 5000, typedAt = 0, refreshed = 0;
  // The counts: the service reads them for one refresh in six (30 s), for the drift and
  // version counts the events do not carry (they are most of a page's time to read).
  function counts(json) {
    var c;
    try { c = JSON.parse(json); } catch (err) { return; }
    ["total", "online", "stale", "offline", "drift"].forEach(function (k) {
      var n = document.getElementById("n-" + k);
      if (n && typeof c[k] === "number") { n.textContent = String(c[k]); }
    });
    var box = document.querySelector(".counts .versions");
    if (!box || !c.versions) { return; }
    var old = box.querySelector("ul, p");
    var list;
    if (c.versions.length === 0) {
      list = document.createElement("p");
      list.className = "muted";
      list.textContent = "none reported yet";
    } else {
      list = document.createElement("ul");
      c.versions.forEach(function (v) {
        var li = document.createElement("li"), code = document.createElement("span");
        code.className = "mono";
        code.textContent = v[0];
        li.appendChild(code);
        li.appendChild(document.createTextNode(": " + v[1]));
        list.appendChild(li);
      });
    }
    if (old) { box.replaceChild(list, old); } else { box.appendChild(list); }
  }
  // The view: the section the table is in, when it holds the table or says that no gateway
  // matches (or none is known yet); not when it says that the filter does not read. htmx
  // swaps the whole section for another view.
  function viewNow() {
    var v = document.getElementById("fleet");
    return v && v.querySelector("table.gateways tbody, .empty") ? v : null;
  }
  function paused(view) {
    if (document.visibilityState !== "visible" || !view || missed) { return true; }
    var t = view.querySelector("table.gateways");
    if (t && (t.matches(":hover") || t.contains(document.activeElement))) { return true; }
    var sel = window.getSelection ? window.getSelection() : null;
    if (t && sel && !sel.isCollapsed && sel.anchorNode && t.contains(sel.anchorNode)) { return true; }
    return Date.now() - typedAt < 2000 || !!document.querySelector(".htmx-request");
  }
  function refresh() {
    var view = viewNow();
    if (!window.fetch || !window.DOMParser || paused(view)) { return; }
    var url = here();
    missed = [];
    var ask = refreshed % 6 === 5 ? "counts" : "1", counted = null;
    fetch(url, { credentials: "same-origin", redirect: "manual", headers: { "x-fleet-rows": ask } })
      .then(function (r) {
        if (!r.ok || r.headers.get("x-fleet-rows") !== "1") { return null; }
        counted = r.headers.get("x-fleet-counts");
        return r.text();
      })
      .then(function (html) {
        var again = missed || [];
        missed = null;
        // Another view meanwhile (a filter, a page): these rows are not its.
        if (html === null || viewNow() !== view || here() !== url) { return; }
        var doc = new DOMParser().parseFromString("<table><tbody>" + html + "</tbody></table>", "text/html");
        var got = {}, answered = doc.querySelectorAll("tr[data-gw]");
        for (var i = 0; i < answered.length; i++) { got[answered[i].getAttribute("data-gw")] = answered[i]; }
        var body = view.querySelector("table.gateways tbody");
        var rows = body ? body.querySelectorAll("tr[data-gw]") : [], have = {};
        for (var j = 0; j < rows.length; j++) {
          var key = rows[j].getAttribute("data-gw"), n = got[key];
          have[key] = true;
          if (!n) { rows[j].setAttribute("data-absent", "1"); continue; }
          rows[j].removeAttribute("data-absent");
          if (n.children.length !== rows[j].children.length) { continue; }
          for (var k = 1; k < n.children.length; k++) {
            var old = rows[j].children[k];
            if (old.outerHTML !== n.children[k].outerHTML) { old.replaceWith(document.importNode(n.children[k], true)); }
          }
        }
        extra = {};
        for (var g in got) { if (!have[g]) { extra[g] = true; } }
        // The events met meanwhile are newer than the answer, or as new: they have the last
        // word on presence (and so on a row's mark, and on a gateway the view lacks).
        for (var a = 0; a < again.length; a++) { apply(again[a]); }
        for (var m = 0; m < rows.length; m++) { mark(rows[m]); }
        tell();
        if (counted) { counts(counted); }
        refreshed += 1;
        view.setAttribute("data-refreshed", String(refreshed));
        if (body) { body.setAttribute("data-refreshed", String(refreshed)); }
      })
      .catch(function () { missed = null; });
  }
  if (document.getElementById("fleet")) {
    document.addEventListener("input", function (ev) {
      if (ev.target && ev.target.closest && ev.target.closest("form.filter")) { typedAt = Date.now(); }
    });
    var rowsTimer = window.setInterval(refresh, EVERY);
    document.addEventListener("visibilitychange", function () { if (document.visibilityState === "visible") { refresh(); } });
    window.addEventListener("pagehide", function () { window.clearInterval(rowsTimer); });
  }
  // A job's progress: its page's counts, bar and state at once, and the rest of its page
  // (executions, actions, times) fetched again and swapped in, at most once a second and at
  // once when the job ends; the jobs list's state cells. No reload.
  var bodyTimer = null;
  function refreshJob() {
    bodyTimer = null;
    if (!window.htmx || !document.getElementById("job-body")) { return; }
    window.htmx.ajax("GET", window.location.href, { target: "#job-body", select: "#job-body", swap: "outerHTML" });
  }
  es.addEventListener("job", function (m) {
    var e;
    try { e = JSON.parse(m.data); } catch (err) { return; }
    var rows = document.querySelectorAll("[data-job]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-job") !== e.id) { continue; }
      var cell = rows[i].querySelector(".jstate");
      if (cell) { cell.textContent = e.state; cell.className = "jstate j-" + e.state; }
    }
    var head = document.querySelector("[data-job-page]");
    if (!head || head.getAttribute("data-job-page") !== e.id) { return; }
    var c = e.counts || {};
    var names = ["total", "queued", "in_progress", "succeeded", "failed", "timed_out", "rejected", "cancelled"];
    for (var j = 0; j < names.length; j++) {
      var n = document.getElementById("c-" + names[j]);
      if (n && typeof c[names[j]] === "number") { n.textContent = String(c[names[j]]); }
    }
    var total = c.total || 0, done = total - (c.queued || 0) - (c.in_progress || 0);
    var d = document.getElementById("c-done");
    if (d) { d.textContent = String(done); }
    var bar = document.getElementById("job-progress");
    if (bar && total > 0) { var pct = Math.floor(done * 100 / total); bar.value = pct; bar.textContent = pct + "%"; }
    var was = head.textContent;
    head.textContent = e.state; head.className = "jstate j-" + e.state;
    var ended = ["succeeded", "failed", "aborted", "cancelled"].indexOf(e.state) >= 0;
    if (ended && was !== e.state) {
      if (bodyTimer) { window.clearTimeout(bodyTimer); }
      refreshJob();
    } else if (!bodyTimer) {
      bodyTimer = window.setTimeout(refreshJob, 1000);
    }
  });
  // Behind the stream, or the session over: the page as the server has it now.
  es.addEventListener("lagged", function () { window.location.reload(); });
  es.addEventListener("ended", function () { es.close(); window.location.reload(); });
  // Leaving the page closes the stream at once: a browser keeps only a few connections to one
  // host, and streams of pages left behind (kept for the back button) would hold them. A page
  // shown again from that cache reloads, to be live and current again.
  window.addEventListener("pagehide", function () { es.close(); });
  window.addEventListener("pageshow", function (ev) { if (ev.persisted) { window.location.reload(); } });
})();
// The gateway page's chart: the recent heartbeats' CPU and memory use, drawn by the server
// (the store keeps a gateway's last 60) and given here as `data-points-json`; the last
// heartbeat is asked for every few seconds (GET …/host.json), each new one (by its own time,
// `ts_ms`) adds a point and the oldest leave past `data-max`. An inline SVG redrawn from
// here, as the CSP allows no inline script. The same answer carries
// the page's figures as the server writes them (version, last heartbeat, uptime, CPU, load,
// memory, disks, resources and drift): they are redrawn from it, with no request of their own.
// Nothing is asked while the tab is hidden.
(function () {
  "use strict";
  var svg = document.querySelector("svg[data-chart]");
  if (!svg || !window.fetch) { return; }
  var url = svg.getAttribute("data-chart");
  var last = document.getElementById("chart-last");
  var MAX = parseInt(svg.getAttribute("data-max") || "60", 10), points = [], seen = null;
  var span = document.getElementById("chart-span");
  try { points = JSON.parse(svg.getAttribute("data-points-json") || "[]"); } catch (err) { points = []; }
  if (points.length) { seen = points[points.length - 1].ts_ms; }
  function clock(ms) { return new Date(ms).toISOString().slice(11, 19); }
  function draw() {
    var lines = svg.querySelectorAll("polyline[data-series]");
    for (var i = 0; i < lines.length; i++) {
      var key = lines[i].getAttribute("data-series"), out = [];
      for (var j = 0; j < points.length; j++) {
        var v = points[j][key];
        if (typeof v !== "number") { continue; }
        // The newest on the right edge; MAX points fill the width (as the server draws them).
        var x = 300 - (300 * (points.length - 1 - j)) / (MAX - 1);
        out.push(x.toFixed(1) + "," + (95 - 0.9 * Math.max(0, Math.min(100, v))).toFixed(1));
      }
      // One point alone draws nothing: a short stroke at the right edge shows it.
      if (out.length === 1) { out.unshift("295.0," + out[0].split(",")[1]); }
      lines[i].setAttribute("points", out.join(" "));
    }
    svg.setAttribute("data-points", String(points.length));
    if (span && points.length) {
      var n = points.length, first = points[0].ts_ms, end = points[n - 1].ts_ms;
      span.textContent = n === 1 ? "1 heartbeat, " + clock(end) + " UTC" :
        n + " heartbeats, " + clock(first) + " to " + clock(end) + " UTC";
    }
  }
  // A table of the figures (disks, storage families), drawn again when its rows change: the
  // first cell a row header, the others text (`num` cells right-aligned).
  var tablesSeen = {};
  function table(name, items, cells) {
    var body = document.querySelector("[data-fig-" + name + "]"), seen = JSON.stringify(items || []);
    if (!body || tablesSeen[name] === seen) { return; }
    tablesSeen[name] = seen;
    body.textContent = "";
    (items || []).forEach(function (d) {
      var tr = document.createElement("tr");
      cells(d).forEach(function (c, i) {
        var td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) { td.scope = "row"; }
        if (c[0]) { td.className = c[0]; }
        td.textContent = c[1];
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }
  function figures(f) {
    var cells = document.querySelectorAll("[data-fig]");
    for (var i = 0; i < cells.length; i++) {
      var v = f[cells[i].getAttribute("data-fig")];
      if (v === undefined || v === null) { continue; }
      if (cells[i].textContent !== String(v)) { cells[i].textContent = String(v); }
    }
    var drift = document.querySelector("[data-fig=drift]");
    if (drift && drift.parentNode) { drift.parentNode.className = f.drift > 0 ? "has-drift" : ""; }
    table("disks", f.disks, function (d) {
      return [["mono", d.mount], ["", d.fs], ["num", d.total], ["num", d.avail], ["num", d.used_pct]];
    });
    table("families", f.families, function (d) {
      return [["", d.name], ["", d.backend], ["", d.up], ["num", d.count], ["num", d.drift]];
    });
  }
  function poll() {
    if (document.visibilityState === "hidden") { return; }
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (p && p.figures) { figures(p.figures); }
        if (!p || typeof p.ts_ms !== "number" || p.ts_ms === seen) { return; }
        seen = p.ts_ms;
        points.push(p);
        if (points.length > MAX) { points.shift(); }
        draw();
        if (last) {
          last.textContent = "last: CPU " + (p.cpu_pct === null ? "?" : p.cpu_pct.toFixed(1)) +
            "%, memory " + (p.mem_pct === null ? "?" : p.mem_pct.toFixed(1)) + "%";
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  poll();
  var timer = window.setInterval(poll, 2000);
  window.addEventListener("pagehide", function () { window.clearInterval(timer); });
})();
// Clear states. A section htmx loads (`data-loading`, the gateway's resources) says what it
// waits for and is marked busy while the request is out; if the request fails (an error
// status, no answer, the 30 s timeout of its hx-request) it says so in its place, with the
// status and whether reading again is safe, so it never stays on "loading". A form that posts
// disables its buttons while the post is out and says so, so a second press sends nothing;
// without JavaScript the forms post as they are.
(function () {
  "use strict";
  function loader(ev) {
    var el = ev.detail && ev.detail.elt;
    return el && el.hasAttribute && el.hasAttribute("data-loading") ? el : null;
  }
  function show(el, cls, role, text, again) {
    var p = document.createElement("p");
    p.className = cls;
    p.setAttribute("role", role);
    p.textContent = text;
    if (again) {
      var a = document.createElement("a");
      a.href = window.location.href;
      a.textContent = "Read again";
      p.appendChild(document.createTextNode(" "));
      p.appendChild(a);
    }
    el.textContent = "";
    el.appendChild(p);
  }
  document.addEventListener("htmx:beforeRequest", function (ev) {
    var el = loader(ev);
    if (!el) { return; }
    el.setAttribute("aria-busy", "true");
    show(el, "loading muted", "status", el.getAttribute("data-loading"), false);
  });
  function failed(el, text) {
    el.setAttribute("aria-busy", "false");
    el.setAttribute("data-failed", "1");
    show(el, "flash bad", "alert", text, true);
  }
  // The console's error page names the status, the problem and whether a retry is safe.
  document.addEventListener("htmx:responseError", function (ev) {
    var el = loader(ev);
    if (!el) { return; }
    var xhr = ev.detail.xhr, said = "", retry = "";
    try {
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var box = doc.querySelector(".error");
      if (box) {
        var ps = box.querySelectorAll("p");
        said = ps.length > 0 ? ps[0].textContent.trim() : "";
        var r = box.querySelector(".retry");
        retry = r ? r.textContent.trim() : "";
      }
    } catch (err) { /* said stays empty: the status alone is shown */ }
    failed(el, "Could not be read: the console answered " + xhr.status + " " + xhr.statusText +
      (said ? " (" + said + ")" : "") + ". " + (retry || "Reading again is safe: a read changes nothing."));
  });
  document.addEventListener("htmx:sendError", function (ev) {
    var el = loader(ev);
    if (el) { failed(el, "Could not be read: the console did not answer (the network or the console is down). Reading again is safe: a read changes nothing."); }
  });
  document.addEventListener("htmx:timeout", function (ev) {
    var el = loader(ev);
    if (el) { failed(el, "Could not be read: no answer within 30 s. Reading again is safe: a read changes nothing."); }
  });
  document.addEventListener("htmx:afterRequest", function (ev) {
    var el = loader(ev);
    if (el && el.isConnected && !el.hasAttribute("data-failed")) { el.removeAttribute("aria-busy"); }
  });

  // Forms that post. The buttons are disabled just after the submit event, once the browser
  // has read the form (a disabled button's name and value, such as the job form's step, would
  // be left out of it).
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    // The attribute, not `form.method`: a field named "method" (the job form has one) hides
    // the form's property.
    if (!(form instanceof HTMLFormElement) || (form.getAttribute("method") || "").toLowerCase() !== "post") { return; }
    if (form.hasAttribute("data-sending")) { ev.preventDefault(); return; }
    if (ev.defaultPrevented) { return; }
    form.setAttribute("data-sending", "1");
    form.setAttribute("aria-busy", "true");
    var at = ev.submitter || null;
    window.setTimeout(function () {
      var buttons = form.querySelectorAll("button, input[type=submit]");
      for (var i = 0; i < buttons.length; i++) {
        if (buttons[i].type === "submit") { buttons[i].disabled = true; }
      }
      var note = document.createElement("span");
      note.className = "sending";
      note.setAttribute("role", "status");
      note.textContent = "Sending…";
      var last = at || buttons[buttons.length - 1];
      if (last && last.parentNode) { last.parentNode.insertBefore(note, last.nextSibling); } else { form.appendChild(note); }
    }, 0);
  });
  // The new-job form's method: choosing one shows its params' fields at once, as its
  // "Choose" button does without JavaScript (the form posted with step=choose, values kept).
  document.addEventListener("change", function (ev) {
    var sel = ev.target;
    if (!(sel instanceof HTMLSelectElement) || !sel.hasAttribute("data-choose") || !sel.form) { return; }
    var button = document.getElementById(sel.getAttribute("data-choose"));
    if (button && sel.form.requestSubmit) { sel.form.requestSubmit(button); }
  });
  // Enter in one of the new-job form's fields is a dry run (`data-enter` names its button),
  // not "Choose", the form's first button (which it is without JavaScript: the form comes
  // back as it was, nothing checked or sent).
  document.addEventListener("keydown", function (ev) {
    var input = ev.target;
    if (ev.key !== "Enter" || !(input instanceof HTMLInputElement) || !input.form) { return; }
    var id = input.form.getAttribute("data-enter"), button = id && document.getElementById(id);
    if (!button || !input.form.requestSubmit) { return; }
    ev.preventDefault();
    input.form.requestSubmit(button);
  });
  // A page shown again from the back-forward cache gets its forms back.
  window.addEventListener("pageshow", function (ev) {
    if (!ev.persisted) { return; }
    var forms = document.querySelectorAll("form[data-sending]");
    for (var i = 0; i < forms.length; i++) {
      forms[i].removeAttribute("data-sending");
      forms[i].removeAttribute("aria-busy");
      var b = forms[i].querySelectorAll("button[type=submit], input[type=submit]");
      for (var j = 0; j < b.length; j++) { b[j].disabled = false; }
      var n = forms[i].querySelectorAll(".sending");
      for (var k = 0; k < n.length; k++) { n[k].remove(); }
    }
  });
})();
// A job page opened while its job moved on (or ended) before the live stream was open would
// miss those events and stay as it was rendered: once the stream is open, the page is read
// again, once, and its state and body replaced if they changed (`data-job-read` on the body
// says it was done).
(function () {
  "use strict";
  var head = document.querySelector("[data-job-page]");
  if (!head || !window.MutationObserver || !window.fetch || !window.DOMParser) { return; }
  var watch = new MutationObserver(function () {
    if (!document.body.hasAttribute("data-live-open")) { return; }
    watch.disconnect();
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var state = doc.getElementById("job-state"), body = doc.getElementById("job-body");
        var here = document.getElementById("job-body");
        if (state) { head.textContent = state.textContent; head.className = state.className; }
        if (body && here && body.textContent !== here.textContent) {
          here.replaceWith(document.importNode(body, true));
          if (window.htmx) { window.htmx.process(document.getElementById("job-body")); }
        }
      })
      .catch(function () { /* the live events carry on */ })
      .then(function () { document.body.setAttribute("data-job-read", "1"); });
  });
  watch.observe(document.body, { attributes: true, attributeFilter: ["data-live-open"] });
})();
