// The select-and-enhance page: pick/drop/paste an image, POST it to /api/enhance, compare, download.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const limits = {
    uploadMB: parseFloat(app.dataset.maxUploadMb),
    inputMP: parseFloat(app.dataset.maxInputMp),
    outputMP: parseFloat(app.dataset.maxOutputMp),
  };
  const ACCEPTED = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"];

  let file = null;           // the chosen File
  let dims = null;           // {w, h} once the browser decoded it (unknown for TIFF)
  let previewURL = null, resultURL = null;
  let busy = false;

  const fmtBytes = (n) => n < 1024 * 1024 ? `${Math.max(1, Math.round(n / 1024))} KB` : `${(n / 1048576).toFixed(1)} MB`;
  const fmtSize = (w, h) => `${w} × ${h} px`;
  const scale = () => parseInt(document.querySelector('input[name="scale"]:checked').value, 10);

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function updateOutputSize() {
    const s = scale();
    if (!dims) { $("output-size").textContent = file ? `Result: ${s}× the original size` : ""; return; }
    const w = dims.w * s, h = dims.h * s, mp = (w * h) / 1e6;
    let text = `Result: ${fmtSize(w, h)} (${mp.toFixed(1)} MP)`;
    if (mp > limits.outputMP) text += ` · over the ${limits.outputMP} MP limit, choose ×2 or a smaller image`;
    $("output-size").textContent = text;
  }

  function updateButton() {
    $("enhance").disabled = busy || !file;
    $("enhance").textContent = busy ? "Enhancing…" : "Enhance Image";
  }

  function choose(f) {
    if (!f) return;
    if (busy) { showError("Please wait for the current image to finish."); return; }
    showError("");
    if (f.type && !ACCEPTED.includes(f.type) && !/\.(tiff?|png|jpe?g|webp|gif|bmp)$/i.test(f.name)) {
      showError(`“${f.name}” is not an image this app reads. Use PNG, JPEG, WebP, GIF, BMP or TIFF.`);
      return;
    }
    if (f.size > limits.uploadMB * 1048576) {
      showError(`This file is ${fmtBytes(f.size)}; the limit is ${limits.uploadMB} MB. Try a smaller image.`);
      return;
    }
    file = f;
    dims = null;
    if (previewURL) URL.revokeObjectURL(previewURL);
    previewURL = URL.createObjectURL(f);
    const img = $("preview");
    img.onload = () => {
      dims = { w: img.naturalWidth, h: img.naturalHeight };
      $("input-size").textContent = `${fmtSize(dims.w, dims.h)} · ${fmtBytes(f.size)}`;
      if ((dims.w * dims.h) / 1e6 > limits.inputMP) {
        showError(`This image has ${((dims.w * dims.h) / 1e6).toFixed(1)} megapixels; the limit is ${limits.inputMP}.`);
      }
      updateOutputSize();
    };
    img.onerror = () => {   // e.g. TIFF: the browser cannot show it, the server can still read it
      img.removeAttribute("src");
      $("input-size").textContent = `${fmtBytes(f.size)} · no preview for this format`;
      updateOutputSize();
    };
    img.src = previewURL;
    $("file-name").textContent = f.name || "Pasted image";
    $("input-size").textContent = fmtBytes(f.size);
    $("drop-empty").hidden = true;
    $("preview-box").hidden = false;
    $("result").hidden = true;
    updateOutputSize();
    updateButton();
  }

  // --- choosing: picker, drag and drop, paste -----------------------------------------------------------
  $("file").addEventListener("change", (e) => { choose(e.target.files[0]); e.target.value = ""; });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "dragend"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) choose(f); else showError("Drop an image file (not a link or text).");
  });
  // a drop anywhere else on the page should not navigate away from it
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { if (!drop.contains(e.target)) e.preventDefault(); });
  document.addEventListener("paste", (e) => {
    const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;
    e.preventDefault();
    const f = item.getAsFile();
    const ext = (item.type.split("/")[1] || "png").replace("jpeg", "jpg");
    choose(new File([f], f.name && f.name !== "image.png" ? f.name : `pasted.${ext}`, { type: item.type }));
  });

  // --- settings ---------------------------------------------------------------------------------------
  const strength = $("strength");
  const showStrength = () => { $("strength-value").textContent = parseFloat(strength.value).toFixed(2); };
  strength.addEventListener("input", showStrength);
  document.querySelectorAll('input[name="scale"]').forEach((r) => r.addEventListener("change", updateOutputSize));
  showStrength();

  // --- enhancing ------------------------------------------------------------------------------------------
  function progress(fraction, text) {
    $("progress").hidden = false;
    const bar = $("progress-fill").parentElement;
    bar.classList.toggle("indeterminate", fraction === null);
    $("progress-fill").style.width = fraction === null ? "" : `${Math.round(fraction * 100)}%`;
    $("status").textContent = text;
  }

  function fallbackError(status) {
    if (status === 413) return "The image is too large for this server.";
    if (status === 429) return "The server is busy; please try again in a minute.";
    return `The server could not enhance this image (error ${status}).`;
  }

  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (busy || !file) return;            // no double submits
    busy = true;
    updateButton();
    showError("");
    const s = scale();
    const body = new FormData();
    body.append("file", file, file.name || "image.png");
    body.append("scale", String(s));
    body.append("strength", strength.value);

    const xhr = new XMLHttpRequest();
    const started = performance.now();
    let timer = null;
    xhr.open("POST", "/api/enhance");
    xhr.responseType = "blob";
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) progress(0.25 * ev.loaded / ev.total, `Uploading… ${Math.round(100 * ev.loaded / ev.total)}%`);
    };
    xhr.upload.onload = () => {
      const tick = () => progress(null, `Enhancing ×${s}… ${Math.round((performance.now() - started) / 1000)} s`);
      tick();
      timer = setInterval(tick, 500);
    };
    xhr.onprogress = (ev) => {
      if (timer) { clearInterval(timer); timer = null; }
      if (ev.lengthComputable) progress(0.75 + 0.25 * ev.loaded / ev.total, `Downloading the result… ${Math.round(100 * ev.loaded / ev.total)}%`);
    };
    const finish = () => { if (timer) clearInterval(timer); busy = false; updateButton(); };
    xhr.onerror = () => { finish(); $("progress").hidden = true; showError("Could not reach the server. Check your connection and try again."); };
    xhr.onload = async () => {
      finish();
      $("progress").hidden = true;
      if (xhr.status !== 200) {
        let message = fallbackError(xhr.status);
        try { const j = JSON.parse(await xhr.response.text()); if (j.error) message = j.error; } catch (_) { /* not JSON */ }
        showError(message);
        return;
      }
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      showResult(xhr.response, xhr.getResponseHeader("X-Output-Size"), xhr.getResponseHeader("Content-Disposition"), s, seconds);
    };
    progress(0, "Uploading…");
    xhr.send(body);
  });

  function showResult(blob, sizeHeader, disposition, s, seconds) {
    if (resultURL) URL.revokeObjectURL(resultURL);
    resultURL = URL.createObjectURL(blob);
    const [w, h] = (sizeHeader || "").split("x").map(Number);
    const m = /filename="([^"]+)"/.exec(disposition || "");
    const name = m ? m[1] : `enhanced_x${s}.png`;
    $("after").src = resultURL;
    $("before-clip").hidden = !dims;      // no "before" when the browser could not show the original
    $("before").src = dims ? previewURL : "";
    $("result-size").textContent = `${w && h ? fmtSize(w, h) : ""} · ${fmtBytes(blob.size)} PNG · ${seconds} s`;
    $("result-size").dataset.width = w || "";
    $("result-size").dataset.height = h || "";
    const dl = $("download");
    dl.href = resultURL;
    dl.download = name;
    $("result").hidden = false;
    setPos(50);
    $("result").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  // --- before/after slider ---------------------------------------------------------------------------------
  const compare = $("compare"), slider = $("compare-slider");
  function setPos(p) { slider.value = p; compare.style.setProperty("--pos", `${p}%`); }
  slider.addEventListener("input", () => setPos(parseFloat(slider.value)));

  updateButton();
})();
