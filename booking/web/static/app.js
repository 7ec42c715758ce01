/* Enhances the pages; every page works without it. No framework, no build step. */
(function () {
  "use strict";
  var d = document;

  function each(selector, fn, root) {
    Array.prototype.forEach.call((root || d).querySelectorAll(selector), fn);
  }

  /* Live seats: the stream /courses/{id}/live, or polling /courses/{id}/seats every 5 s when
     EventSource is missing or the stream is refused (503). Status words come from the page. */
  var WORDS = {open: "data-open-text", sold_out: "data-full-text",
               not_open: "data-not-open-text", cancelled: "data-cancelled-text"};

  function liveSeats(el) {
    var id = el.getAttribute("data-course-id");
    var status = el.parentNode.querySelector("[data-seat-status]") ||
                 d.querySelector("[data-seat-status]");
    var polling = false;

    function show(text) {
      var s;
      try { s = JSON.parse(text); } catch (e) { return; }
      if (String(s.course_id) !== id) return;
      el.textContent = s.seats_left;
      var words = status && status.getAttribute(WORDS[s.status]);
      if (words) status.textContent = words;
    }

    function poll() {
      if (polling) return;
      polling = true;
      (function ask() {
        var x = new XMLHttpRequest();
        x.open("GET", "/courses/" + id + "/seats");
        x.onload = function () { if (x.status === 200) show(x.responseText); };
        x.send();
        setTimeout(ask, 5000);
      })();
    }

    if (!window.EventSource) return poll();
    var es = new EventSource("/courses/" + id + "/live");
    es.addEventListener("seats", function (e) { show(e.data); });
    es.onerror = function () {  // CLOSED: refused, the browser will not try again
      if (es.readyState === 2) { es.close(); poll(); }
    };
  }

  /* Countdown to data-opens-at on the server's clock (data-server-now; epoch ms); at zero
     the page is reloaded, once. */
  function countdown(el) {
    var opens = +el.getAttribute("data-opens-at");
    var t = window.performance && performance.timing;
    var skew = +el.getAttribute("data-server-now") - ((t && t.responseStart) || Date.now());
    var zh = (d.documentElement.lang || "zh").indexOf("en") !== 0;
    var units = zh ? ["天", "时", "分", "秒"] : ["d", "h", "m", "s"];

    (function tick() {
      var ms = opens - Date.now() - skew, left = Math.ceil(ms / 1000), out = [];
      if (left <= 0) {
        el.textContent = "0" + units[3];
        return reloadOnce(String(opens));
      }
      var parts = [Math.floor(left / 86400), Math.floor(left / 3600) % 24,
                   Math.floor(left / 60) % 60, left % 60];
      for (var i = 0; i < 4; i++) {
        if (parts[i] || out.length || i > 1) out.push(parts[i] + units[i]);
      }
      el.textContent = out.join(zh ? "" : " ");
      setTimeout(tick, (ms % 1000 || 1000) + 20);
    })();
  }

  function reloadOnce(key) {
    var name = "reloaded:" + location.pathname;
    try {
      if (sessionStorage.getItem(name) === key) return;
      sessionStorage.setItem(name, key);
    } catch (e) { /* no storage: reload anyway */ }
    location.reload();
  }

  /* "Use my location": fills lat and lon of the button's form and sends it. */
  function locate(button) {
    var form = button.form;
    if (!navigator.geolocation || !form) return;
    button.hidden = false;
    button.addEventListener("click", function (e) {
      e.preventDefault();
      navigator.geolocation.getCurrentPosition(function (p) {
        form.elements.lat.value = p.coords.latitude.toFixed(5);
        form.elements.lon.value = p.coords.longitude.toFixed(5);
        HTMLFormElement.prototype.submit.call(form);
      }, function () {
        var text = button.getAttribute("data-error-text");
        if (text) button.textContent = text;
      }, {timeout: 15000, maximumAge: 600000});
    });
  }

  /* A sent form's buttons are disabled once the browser has put the clicked one in the POST
     (a double tap sends it once); coming back to the page enables them again. */
  d.addEventListener("submit", function (e) {
    var form = e.target;
    if (e.defaultPrevented) return;
    setTimeout(function () {
      each("button:not([type=button]):not([type=reset]), input[type=submit]", function (b) {
        if (!b.disabled) { b.disabled = true; b.setAttribute("data-sent", ""); }
      }, form);
    }, 0);
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted) {
      each("[data-sent]", function (b) { b.disabled = false; b.removeAttribute("data-sent"); });
    }
  });

  each("#seats-left[data-course-id]", liveSeats);
  each("[data-countdown][data-opens-at][data-server-now]", countdown);
  each("button[data-locate]", locate);
})();
