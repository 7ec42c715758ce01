/* The venue's dashboard: every course's seats on one stream (/live?courses=1,2,3), or polling
   /courses/{id}/seats every 5 s when EventSource is missing or the stream is refused. */
(function () {
  "use strict";
  var table = document.querySelector("[data-live-courses]");
  if (!table) return;
  var ids = table.getAttribute("data-live-courses").split(",").filter(Boolean);
  if (!ids.length) return;
  var polling = false;

  function show(text) {
    var s;
    try { s = JSON.parse(text); } catch (e) { return; }
    var el = table.querySelector('[data-seats-left][data-course-id="' + s.course_id + '"]');
    if (el) el.textContent = s.seats_left;
  }

  function poll() {
    if (polling) return;
    polling = true;
    (function ask() {
      ids.forEach(function (id) {
        var x = new XMLHttpRequest();
        x.open("GET", "/courses/" + id + "/seats");
        x.onload = function () { if (x.status === 200) show(x.responseText); };
        x.send();
      });
      setTimeout(ask, 5000);
    })();
  }

  if (!window.EventSource) return poll();
  var es = new EventSource("/live?courses=" + ids.join(","));
  es.addEventListener("seats", function (e) { show(e.data); });
  es.onerror = function () {  // CLOSED: refused, the browser will not try again
    if (es.readyState === 2) { es.close(); poll(); }
  };
})();
