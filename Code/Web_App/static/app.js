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

  // the server's own words for a file it cannot read (superres.runtime.imaging.UnsupportedImage)
  const NOT_AN_IMAGE = "This file is not an image we can read. Use PNG, JPEG, WebP, GIF, BMP or TIFF.";

  let file = null;           // the chosen File, once it is known to be an image
  let dims = null;           // {w, h} once the browser decoded it (unknown for TIFF)
  let previewURL = null, resultURL = null;
  let busy = false;
  let chosen = 0;            // counts choices, so that a slow decode of an earlier file is ignored

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
    $("cancel").hidden = !busy;
  }

  // TIFF is the one format we read that browsers do not show: recognised by its first bytes instead
  async function isTiff(f) {
    const b = new Uint8Array(await f.slice(0, 4).arrayBuffer());
    return (b[0] === 0x49 && b[1] === 0x49 && b[2] === 0x2a && b[3] === 0) ||
           (b[0] === 0x4d && b[1] === 0x4d && b[2] === 0 && b[3] === 0x2a);
  }

  function clearChoice() {
    file = null;
    dims = null;
    $("preview").removeAttribute("src");
    $("preview-box").hidden = true;
    $("drop-empty").hidden = false;
    updateOutputSize();
    updateButton();
  }

  function choose(f) {
    if (!f) return;
    if (busy) { showError("Please wait for the current image to finish."); return; }
    showError("");
    $("note").hidden = true;
    if (f.type && !ACCEPTED.includes(f.type) && !/\.(tiff?|png|jpe?g|webp|gif|bmp)$/i.test(f.name)) {
      clearChoice();
      showError(NOT_AN_IMAGE);
      return;
    }
    if (f.size > limits.uploadMB * 1048576) {
      showError(`This file is ${fmtBytes(f.size)}; the limit is ${limits.uploadMB} MB. Try a smaller image.`);
      return;
    }
    const token = ++chosen;
    file = null;                          // Enhance stays off until the file is known to be an image
    dims = null;
    if (previewURL) URL.revokeObjectURL(previewURL);
    previewURL = URL.createObjectURL(f);
    const img = $("preview");
    img.onload = () => {
      if (token !== chosen) return;
      file = f;
      dims = { w: img.naturalWidth, h: img.naturalHeight };
      $("input-size").textContent = `${fmtSize(dims.w, dims.h)} · ${fmtBytes(f.size)}`;
      if ((dims.w * dims.h) / 1e6 > limits.inputMP) {
        showError(`This image has ${((dims.w * dims.h) / 1e6).toFixed(1)} megapixels; the limit is ${limits.inputMP}.`);
      }
      updateOutputSize();
      updateButton();
    };
    img.onerror = async () => {
      if (token !== chosen) return;
      if (await isTiff(f)) {              // the server reads it; the browser just cannot show it
        if (token !== chosen) return;
        file = f;
        img.removeAttribute("src");
        $("input-size").textContent = `${fmtBytes(f.size)} · no preview for this format`;
        updateOutputSize();
        updateButton();
      } else {
        clearChoice();
        showError(NOT_AN_IMAGE);
      }
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

  // --- output format ----------------------------------------------------------------------------------------
  const format = $("format");
  const showQuality = () => { $("quality-box").hidden = !["webp", "jpeg"].includes(format.value); };
  format.addEventListener("change", showQuality);
  showQuality();
  function formatFields() {               // the select's value -> the API's format and quality fields
    const lossy = format.value === "webp" || format.value === "jpeg";
    return { format: format.value.replace("-lossless", ""), quality: lossy ? $("quality").value : "" };
  }

  // --- enhancing: a job (POST /api/jobs), its progress (GET), its result, or Cancel (DELETE) ----------------
  let job = null;            // {status_url, result_url, xhr, started, firstTile, scale} while one runs

  function progress(fraction, text) {
    $("progress").hidden = false;
    const bar = $("progress-bar");
    bar.classList.toggle("indeterminate", fraction === null);
    $("progress-fill").style.width = fraction === null ? "" : `${(fraction * 100).toFixed(1)}%`;
    if (fraction === null) bar.removeAttribute("aria-valuenow"); else bar.setAttribute("aria-valuenow", (fraction * 100).toFixed(1));
    $("status").textContent = text;
  }

  function fallbackError(status) {
    if (status === 413) return "The image is too large for this server.";
    if (status === 429) return "The server is busy; please try again in a minute.";
    return `The server could not enhance this image (error ${status}).`;
  }

  async function errorText(response) {    // a fetch Response or the text of one
    try { const j = JSON.parse(typeof response === "string" ? response : await response.text()); if (j.error) return j.error; } catch (_) { /* not JSON */ }
    return null;
  }

  function finish(message, error) {
    job = null;
    busy = false;
    updateButton();
    $("progress").hidden = true;
    if (error) showError(error);
    $("note").textContent = message || "";
    $("note").hidden = !message;
  }

  $("form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (busy || !file) return;            // no double submits
    busy = true;
    updateButton();
    showError("");
    $("note").hidden = true;
    const s = scale();
    const body = new FormData();
    body.append("file", file, file.name || "image.png");
    body.append("scale", String(s));
    body.append("strength", strength.value);
    const fields = formatFields();
    body.append("format", fields.format);
    if (fields.quality) body.append("quality", fields.quality);

    const xhr = new XMLHttpRequest();
    job = { xhr, scale: s, started: performance.now() };
    xhr.open("POST", "/api/jobs");
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) progress(0, `Uploading… ${Math.round(100 * ev.loaded / ev.total)}%`);
    };
    xhr.onerror = () => finish("", "Could not reach the server. Check your connection and try again.");
    xhr.onabort = () => finish("Cancelled.");
    xhr.onload = async () => {
      if (xhr.status !== 202) { finish("", (await errorText(xhr.responseText)) || fallbackError(xhr.status)); return; }
      Object.assign(job, JSON.parse(xhr.responseText), { xhr: null });
      poll();
    };
    progress(0, "Uploading…");
    xhr.send(body);
  });

  function secondsLeft(j) {               // from the pace of the tiles so far; for big jobs only
    if (!job.firstTile || j.tiles_total < 4 || j.tiles_done < 1) return "";
    const perTile = (performance.now() - job.firstTile) / 1000 / j.tiles_done;
    const left = Math.round(perTile * (j.tiles_total - j.tiles_done));
    return left >= 3 ? ` · about ${left} s left` : "";
  }

  async function poll() {
    const current = job;
    if (!current || !current.status_url) return;
    let r;
    try { r = await fetch(current.status_url, { cache: "no-store" }); } catch (_) { r = null; }
    if (job !== current) return;          // cancelled or replaced meanwhile
    if (!r || !r.ok) { finish("", (r && await errorText(r)) || "Lost track of the job on the server. Please try again."); return; }
    const j = await r.json();
    if (j.state === "queued") {
      const ahead = j.queue_position - 1;
      progress(0, ahead > 0 ? `Waiting in the queue: ${ahead} image${ahead > 1 ? "s" : ""} ahead of yours` : "Waiting in the queue: yours is next");
    } else if (j.state === "running") {
      if (!current.firstTile) current.firstTile = performance.now();
      const tiles = j.tiles_total ? ` · tile ${j.tiles_done} of ${j.tiles_total}` : "";
      progress(j.progress, `Enhancing ×${current.scale}… ${Math.round(j.progress * 100)}%${tiles}${secondsLeft(j)}`);
    } else if (j.state === "done") {
      progress(1, "Downloading the result…");
      await fetchResult(current);
      return;
    } else if (j.state === "failed") {
      finish("", j.error || "The server could not enhance this image.");
      return;
    } else if (j.state === "cancelled") {
      finish("Cancelled.");
      return;
    }
    setTimeout(poll, 250);
  }

  async function fetchResult(current) {
    let r;
    try { r = await fetch(current.result_url); } catch (_) { r = null; }
    if (job !== current) return;
    if (!r || !r.ok) { finish("", (r && await errorText(r)) || "Could not download the result. Please try again."); return; }
    const blob = await r.blob();
    const seconds = ((performance.now() - current.started) / 1000).toFixed(1);
    finish("");
    await showResult(blob, r.headers.get("X-Output-Size"), r.headers.get("Content-Disposition"), current.scale, seconds);
  }

  $("cancel").addEventListener("click", async () => {
    const current = job;
    if (!current) return;
    if (current.xhr) { current.xhr.abort(); return; }     // still uploading
    $("cancel").disabled = true;
    progress(null, "Cancelling…");
    try { await fetch(current.status_url, { method: "DELETE" }); } catch (_) { /* the poll will tell */ }
    $("cancel").disabled = false;
  });

  async function showResult(blob, sizeHeader, disposition, s, seconds) {
    if (resultURL) URL.revokeObjectURL(resultURL);
    resultURL = URL.createObjectURL(blob);
    const [w, h] = (sizeHeader || "").split("x").map(Number);
    const m = /filename="([^"]+)"/.exec(disposition || "");
    const name = m ? m[1] : `enhanced_x${s}.png`;
    const ext = name.split(".").pop().toUpperCase().replace("JPG", "JPEG");
    const after = $("after");
    after.src = resultURL;
    $("before-clip").hidden = !dims;      // no "before" when the browser could not show the original
    $("before").src = dims ? previewURL : "";
    $("result-size").textContent = `${w && h ? fmtSize(w, h) : ""} · ${fmtBytes(blob.size)} ${ext} · ${seconds} s`;
    $("result-size").dataset.width = w || "";
    $("result-size").dataset.height = h || "";
    const dl = $("download");
    dl.href = resultURL;
    dl.download = name;
    dl.textContent = `Download ${ext}`;
    $("result").hidden = false;
    setPos(50);
    try { await after.decode(); } catch (_) { /* shown anyway */ }
    // only now is the card its final height: bring all of it into view (not just its top)
    $("result").scrollIntoView({ block: "nearest" });
  }

  // --- before/after slider ---------------------------------------------------------------------------------
  const compare = $("compare"), slider = $("compare-slider");
  function setPos(p) { slider.value = p; compare.style.setProperty("--pos", `${p}%`); }
  slider.addEventListener("input", () => setPos(parseFloat(slider.value)));

  updateButton();
})();
