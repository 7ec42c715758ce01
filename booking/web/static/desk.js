/* The check-in desk's camera: where the browser has BarcodeDetector, a button that reads a QR
   with the camera, puts its text in the `token` field and sends the form. The page works
   without this script (a scanner or a typed code). */
(function () {
  "use strict";
  var form = document.getElementById("checkin");
  if (!form || !("BarcodeDetector" in window) || !navigator.mediaDevices ||
      !navigator.mediaDevices.getUserMedia) return;
  var field = form.querySelector("[name=token]");
  var button = document.createElement("button");
  var video = document.createElement("video");
  var startText = form.getAttribute("data-camera-text");
  var stopText = form.getAttribute("data-stop-text");
  var stream = null, detector = null;

  button.type = "button";
  button.className = "button";
  button.textContent = startText;
  video.setAttribute("playsinline", "");
  video.muted = true;
  video.hidden = true;
  video.style.maxWidth = "100%";
  form.appendChild(button);
  form.appendChild(video);

  function stop() {
    if (stream) stream.getTracks().forEach(function (t) { t.stop(); });
    stream = null;
    video.hidden = true;
    button.textContent = startText;
  }

  function look() {
    if (!stream) return;
    detector.detect(video).then(function (codes) {
      var text = codes.length && codes[0].rawValue;
      if (text) {
        stop();
        field.value = text;
        form.submit();
      } else {
        setTimeout(look, 200);
      }
    }, function () { setTimeout(look, 500); });
  }

  button.addEventListener("click", function () {
    if (stream) { stop(); return; }
    try {
      detector = detector || new window.BarcodeDetector({formats: ["qr_code"]});
    } catch (e) { button.hidden = true; return; }
    navigator.mediaDevices.getUserMedia({video: {facingMode: "environment"}, audio: false})
      .then(function (s) {
        stream = s;
        video.srcObject = s;
        video.hidden = false;
        button.textContent = stopText;
        return video.play();
      }).then(look, function () { stop(); field.focus(); });
  });
})();
