// The csg console's live updates: one server-sent event stream per page (GET /ui/events);
// each presence change redraws the rows and badges of that gateway, wherever they are on the
// page (rows swapped in by htmx too, as they are looked up when an event comes). Without
// JavaScript the pages still read; they are just not live.
(function () {
  "use strict";
  var source = document.querySelector("[data-live]");
  if (!source || !window.EventSource) { return; }
  var live = document.getElementById("live");
  function say(text) { if (live) { live.textContent = text; } }
  var es = new EventSource(source.getAttribute("data-live"));
  es.onopen = function () { say("live"); document.body.setAttribute("data-live-open", "1"); };
  es.onerror = function () { say("live updates reconnecting…"); document.body.removeAttribute("data-live-open"); };
  es.addEventListener("presence", function (m) {
    var e;
    try { e = JSON.parse(m.data); } catch (err) { return; }
    var nodes = document.querySelectorAll("[data-gw]");
    for (var i = 0; i < nodes.length; i++) {
      var n = nodes[i];
      if (n.getAttribute("data-gw") !== e.key) { continue; }
      var badge = n.hasAttribute("data-presence-badge") ? n : n.querySelector("[data-presence]");
      if (badge) { badge.textContent = e.to; badge.className = "presence p-" + e.to; }
      var since = n.querySelector("[data-since]");
      if (since) { since.textContent = e.since; since.title = e.since_utc; }
      n.setAttribute("data-state", e.to);
    }
    var text = document.querySelector("[data-presence-text]");
    if (text && document.querySelector("[data-presence-badge][data-gw='" + e.key.replace(/'/g, "") + "']")) {
      text.textContent = e.to;
    }
  });
  // Behind the stream, or the session over: the page as the server has it now.
  es.addEventListener("lagged", function () { window.location.reload(); });
  es.addEventListener("ended", function () { es.close(); window.location.reload(); });
})();
