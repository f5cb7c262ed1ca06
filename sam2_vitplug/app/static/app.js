// sam2-vitplug few-shot page: plain JS, no libraries, everything from this server.
"use strict";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#e53935", "#43a047", "#1e88e5", "#fdd835", "#8e24aa", "#00acc1", "#fb8c00", "#6d4c41", "#d81b60", "#7cb342"];
const S = { images: [], classes: [], refs: [], current: null, prompt: { points: [], box: null }, preview: null,
            review: null, selected: null, cards: {}, seq: 0, min: 0.5 };

function message(text, ok) {
  const m = $("msg");
  m.textContent = text || ""; m.hidden = !text; m.className = ok ? "ok" : "";
}

async function api(path, body, raw) {
  const opts = body === undefined ? {} : raw
    ? { method: "POST", headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(raw) }, body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let resp;
  try { resp = await fetch(path, opts); } catch (e) { throw new Error("the app server does not answer; is it still running?"); }
  const data = await resp.json().catch(() => ({ error: `bad answer from the server (HTTP ${resp.status})` }));
  if (!resp.ok || (data && data.error)) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}
const guard = (fn) => async (...a) => { try { await fn(...a); } catch (e) { message(e.message); } };

function classColor(name) {
  const i = S.classes.indexOf(name);
  return PALETTE[(i < 0 ? S.classes.length : i) % PALETTE.length];
}
function loadImage(src) {
  return new Promise((ok, bad) => { const im = new Image(); im.onload = () => ok(im); im.onerror = () => bad(new Error("cannot load " + src.slice(0, 60))); im.src = src; });
}
// a tinted copy of a white+alpha mask PNG, and its alpha for hit tests
async function tinted(url, color) {
  const im = await loadImage(url);
  const c = document.createElement("canvas"); c.width = im.width; c.height = im.height;
  const g = c.getContext("2d"); g.drawImage(im, 0, 0);
  const alpha = g.getImageData(0, 0, c.width, c.height).data;
  g.globalCompositeOperation = "source-in"; g.fillStyle = color; g.fillRect(0, 0, c.width, c.height);
  return { canvas: c, hit: (x, y) => alpha[(Math.floor(y) * c.width + Math.floor(x)) * 4 + 3] > 0 };
}

// ---------- tabs
function showTab(name) {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== "panel-" + name; });
  if (name === "review") guard(loadReview)();
  if (name === "export") updateExportInfo();
}
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));

// ---------- state
async function loadState() {
  const st = await api("/api/state");
  S.images = st.images; S.classes = st.classes; S.refs = st.references;
  $("model").textContent = `SAM2 ${st.sam2_config} · files in ${st.out}`;
  fillSettings(st.defaults);
  renderImageList(); renderRefList(); renderTargets();
  if (st.job.state !== "idle") showJob(st.job);
  if (!S.current && S.images.length) await selectImage(S.images[0]);
  if (!S.images.length) message("the image folder has no images; upload one (References > Upload an image)");
}

// rebuilt only when the folder's images change; selections and references only restyle the items
function renderImageList() {
  const ul = $("image-list"); ul.innerHTML = "";
  for (const name of S.images) {
    const li = document.createElement("li");
    li.textContent = name; li.dataset.name = name;
    li.addEventListener("click", guard(() => selectImage(name)));
    ul.appendChild(li);
  }
  markImageList();
}
function markImageList() {
  for (const li of $("image-list").children) {
    li.classList.toggle("current", li.dataset.name === S.current?.name);
    li.classList.toggle("has-refs", S.refs.some((r) => r.file_name === li.dataset.name));
  }
}

function renderRefList() {
  $("ref-count").textContent = S.refs.length;
  const ul = $("ref-list"); ul.innerHTML = "";
  for (const r of S.refs) {
    const li = document.createElement("li"); li.dataset.id = r.id;
    const label = document.createElement("span");
    label.innerHTML = `<span class="swatch" style="background:${classColor(r.class_name)}"></span>`;
    label.append(`#${r.id} ${r.class_name} · ${r.file_name}`);
    label.style.cursor = "pointer"; label.addEventListener("click", guard(() => selectImage(r.file_name)));
    const del = document.createElement("button"); del.textContent = "delete"; del.className = "delete-ref";
    del.addEventListener("click", guard(async () => {
      await api("/api/references/delete", { id: r.id });
      S.refs = S.refs.filter((x) => x.id !== r.id);
      renderRefList(); markImageList(); renderTargets(); await refreshImageRefs(); message("reference deleted", true);
    }));
    li.append(label, del); ul.appendChild(li);
  }
  $("class-list").innerHTML = S.classes.map((c) => `<option value="${c.replace(/"/g, "&quot;")}">`).join("");
}

// ---------- references
async function selectImage(name) {
  const im = await loadImage("/images/" + encodeURIComponent(name));
  const scale = Math.max(1, Math.min(4, Math.floor(640 / Math.max(im.width, im.height)))) || 1;
  S.current = { name, im, scale, refMasks: [] };
  const c = $("ref-canvas"); c.width = im.width * scale; c.height = im.height * scale; c.dataset.scale = scale;
  c.dataset.image = name;
  S.prompt = { points: [], box: null }; S.preview = null;
  markImageList(); await refreshImageRefs(); $("ref-status").textContent = `${name}: ${im.width}x${im.height}`;
}

async function refreshImageRefs() {
  if (!S.current) return;
  const name = S.current.name;
  const refs = await api("/api/refs?image=" + encodeURIComponent(name));
  const masks = [];
  for (const r of refs) masks.push({ ...r, t: await tinted(r.mask, classColor(r.class_name)) });
  if (S.current.name === name) { S.current.refMasks = masks; drawRef(); }
}

function drawRef(drag) {
  const c = $("ref-canvas"), g = c.getContext("2d"), cur = S.current;
  if (!cur) return;
  const s = cur.scale;
  g.imageSmoothingEnabled = false;
  g.clearRect(0, 0, c.width, c.height); g.drawImage(cur.im, 0, 0, c.width, c.height);
  g.globalAlpha = 0.45;
  for (const m of cur.refMasks) g.drawImage(m.t.canvas, 0, 0, c.width, c.height);
  if (S.preview) { g.globalAlpha = 0.55; g.drawImage(S.preview.t.canvas, 0, 0, c.width, c.height); }
  g.globalAlpha = 1;
  g.font = "bold 13px system-ui"; g.textAlign = "center";
  for (const m of cur.refMasks) {
    g.fillStyle = "#fff"; g.fillText(m.class_name, (m.bbox[0] + m.bbox[2] / 2) * s, (m.bbox[1] + m.bbox[3] / 2) * s);
  }
  for (const [x, y, l] of S.prompt.points) {
    g.beginPath(); g.arc(x * s, y * s, 5, 0, 7); g.fillStyle = l ? "#00e676" : "#ff1744"; g.fill();
    g.lineWidth = 1.5; g.strokeStyle = "#000"; g.stroke();
  }
  c.dataset.prompt = S.prompt.points.map((p) => p[2]).join("") + (S.prompt.box ? "b" : ""); // 1 positive, 0 negative, b box
  const b = drag || S.prompt.box;
  if (b) { g.strokeStyle = "#00e5ff"; g.lineWidth = 2; g.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s); }
}

function canvasPoint(ev) {
  const c = $("ref-canvas"), r = c.getBoundingClientRect(), s = S.current.scale;
  const x = (ev.clientX - r.left) * (c.width / r.width) / s, y = (ev.clientY - r.top) * (c.height / r.height) / s;
  return [Math.max(0, Math.min(S.current.im.width, x)), Math.max(0, Math.min(S.current.im.height, y))];
}

let down = null;
$("ref-canvas").addEventListener("contextmenu", (ev) => ev.preventDefault());
$("ref-canvas").addEventListener("mousedown", (ev) => { if (S.current) down = { p: canvasPoint(ev), neg: ev.shiftKey || ev.button === 2 }; });
$("ref-canvas").addEventListener("mousemove", (ev) => {
  if (!down) return;
  const p = canvasPoint(ev);
  if (Math.hypot(p[0] - down.p[0], p[1] - down.p[1]) * S.current.scale > 6) drawRef([down.p[0], down.p[1], p[0], p[1]]);
});
window.addEventListener("mouseup", guard(async (ev) => {
  if (!down) return;
  const start = down; down = null;
  const p = canvasPoint(ev);
  if (Math.hypot(p[0] - start.p[0], p[1] - start.p[1]) * S.current.scale > 6) {
    S.prompt.box = [Math.min(start.p[0], p[0]), Math.min(start.p[1], p[1]), Math.max(start.p[0], p[0]), Math.max(start.p[1], p[1])];
  } else if (ev.target === $("ref-canvas")) {
    S.prompt.points.push([start.p[0], start.p[1], start.neg ? 0 : 1]);
  } else return;
  await segment();
}));

function promptBody() {
  return { image: S.current.name, points: S.prompt.points.map(([x, y, l]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10, l]), box: S.prompt.box };
}

async function segment() {
  drawRef();
  if (!S.prompt.points.some((p) => p[2] === 1) && !S.prompt.box) { S.preview = null; drawRef(); $("ref-status").textContent = "add a positive point or a box"; return; }
  const seq = ++S.seq;
  $("ref-status").textContent = "SAM2 is segmenting...";
  const r = await api("/api/segment", promptBody());
  if (seq !== S.seq) return; // a newer click is on its way
  S.preview = { ...r, t: await tinted(r.mask, classColor($("class-name").value.trim())) };
  $("ref-status").textContent = `mask: ${r.area} px, SAM2 IoU ${r.score.toFixed(3)}`;
  $("ref-status").dataset.ready = String(S.seq);
  message("");
  drawRef();
}

$("undo-point").addEventListener("click", guard(async () => {
  if (S.prompt.box) S.prompt.box = null; else S.prompt.points.pop();
  await segment();
}));
$("clear-prompt").addEventListener("click", () => { S.prompt = { points: [], box: null }; S.preview = null; drawRef(); });
$("add-ref").addEventListener("click", guard(async () => {
  if (!S.current) throw new Error("choose an image first");
  const name = $("class-name").value.trim();
  if (!name) throw new Error("type a class name for this object (Class field), then Add reference");
  const r = await api("/api/references", { ...promptBody(), class_name: name });
  if (!S.classes.includes(name)) S.classes.push(name);
  S.refs.push(r);
  S.prompt = { points: [], box: null }; S.preview = null;
  renderRefList(); markImageList(); renderTargets(); await refreshImageRefs();
  message(`reference #${r.id} (${name}) saved to references.json`, true);
}));

$("upload").addEventListener("change", guard(async (ev) => {
  const f = ev.target.files[0]; if (!f) return;
  let r;
  try { r = await api("/api/upload", await f.arrayBuffer(), f.name); } finally { ev.target.value = ""; }
  S.images = r.images; renderImageList(); renderTargets(); await selectImage(r.uploaded);
  message(`uploaded ${r.uploaded}`, true);
}));

// ---------- run
function fillSettings(d) {
  $("s-encoder").value = $("s-encoder").value || d.encoder || "";
  $("s-method").value = d.method; $("s-shots").value = d.shots; $("s-points").value = d.points_per_side;
  $("s-iou").value = d.iou_thr; $("s-input").value = d.input_size ?? "";
}
$("s-method").addEventListener("change", guard(async () => fillSettings(await api("/api/defaults?method=" + $("s-method").value))));

function renderTargets() {
  const ul = $("target-list"), was = new Set(selectedTargets());
  const first = !ul.children.length; ul.innerHTML = "";
  for (const name of S.images) {
    const li = document.createElement("li"), cb = document.createElement("input");
    cb.type = "checkbox"; cb.value = name; cb.checked = first || was.has(name); cb.addEventListener("change", countTargets);
    const lab = document.createElement("label"); lab.append(cb, " " + name); li.appendChild(lab); ul.appendChild(li);
  }
  countTargets();
}
function selectedTargets() { return [...$("target-list").querySelectorAll("input:checked")].map((c) => c.value); }
function countTargets() { $("target-count").textContent = `${selectedTargets().length} of ${S.images.length}`; }
function setTargets(fn) { $("target-list").querySelectorAll("input").forEach((c) => { c.checked = fn(c.value); }); countTargets(); }
$("t-all").addEventListener("click", () => setTargets(() => true));
$("t-none").addEventListener("click", () => setTargets(() => false));
$("t-nonref").addEventListener("click", () => setTargets((n) => !S.refs.some((r) => r.file_name === n)));

function settings() {
  return { encoder: $("s-encoder").value, method: $("s-method").value, shots: Number($("s-shots").value),
           points_per_side: Number($("s-points").value), iou_thr: Number($("s-iou").value),
           input_size: $("s-input").value === "" ? null : Number($("s-input").value),
           shared_backbone: $("s-shared").checked, sets: $("s-sets").value.trim() };
}

let polling = null;
$("run").addEventListener("click", guard(async () => {
  const job = await api("/api/run", { settings: settings(), targets: selectedTargets() });
  message(""); showJob(job); poll();
}));
function poll() {
  clearTimeout(polling);
  polling = setTimeout(guard(async () => { const j = await api("/api/job"); showJob(j); if (j.state === "running") poll(); }), 400);
}
function showJob(j) {
  $("run").disabled = j.state === "running";
  const p = $("progress"); p.max = Math.max(1, j.total); p.value = j.done;
  const st = $("job-status"); st.dataset.state = j.state;
  st.textContent = j.state === "error" ? `failed: ${j.message}` : j.state === "running"
    ? `${j.stage}: ${j.done} of ${j.total} images (${j.seconds} s)` : j.state === "done"
    ? `done: ${j.total} images in ${j.seconds} s; see Review` : "idle";
  if (j.state === "error") message(j.message);
  if (j.state === "running" && !polling) poll();
  $("commands").textContent = (j.commands || []).join("\n\n");
  if (j.state === "done") S.review = null; // reload on the next visit
}

// ---------- review
const minScore = () => S.min; // the typed value, exactly (the slider snaps to its 0.01 steps)
function visible(d) { return d.status === "accepted" || (d.status !== "rejected" && d.score >= minScore()); }
function kept() { return S.review ? S.review.detections.filter(visible) : []; }

async function loadReview() {
  if (S.review) return renderReview();
  const r = await api("/api/review");
  S.review = r; S.selected = null; S.cards = {};
  r.byImage = {};
  for (const d of r.detections) (r.byImage[d.image_id] ||= []).push(d);
  $("grid").innerHTML = "";
  if (!r.images.length) { $("grid").textContent = "no run yet: make references, then Run"; return; }
  $("det-class").innerHTML = r.categories.map((c) => `<option value="${c.id}">${c.name}</option>`).join("");
  for (const im of r.images) {
    const card = document.createElement("div"); card.className = "card"; card.dataset.imageId = im.id;
    const c = document.createElement("canvas"), info = document.createElement("p");
    card.append(c, info); $("grid").appendChild(card);
    S.cards[im.id] = { im, canvas: c, info, masks: {}, photo: null, scale: 1 };
    c.addEventListener("click", (ev) => pick(im.id, ev));
  }
  for (const im of r.images) await loadCard(im.id);
  renderReview();
  $("grid").dataset.ready = "1";
}

async function loadCard(imageId) {
  const card = S.cards[imageId];
  card.photo = await loadImage("/images/" + encodeURIComponent(card.im.file_name));
  card.scale = Math.max(1, Math.floor(320 / Math.max(card.photo.width, card.photo.height)));
  card.canvas.width = card.photo.width * card.scale; card.canvas.height = card.photo.height * card.scale;
  card.canvas.dataset.scale = card.scale;
  for (const d of await api("/api/review/masks?image_id=" + imageId)) {
    card.masks[d.id] = { anchor: d.anchor, t: await tinted(d.mask, PALETTE[(d.category_id - 1) % PALETTE.length]), url: d.mask };
  }
}

function className(id) { const c = S.review.categories.find((c) => c.id === id); return c ? c.name : String(id); }

function drawCard(imageId) {
  const card = S.cards[imageId], g = card.canvas.getContext("2d"), s = card.scale;
  if (!card.photo) return;
  g.imageSmoothingEnabled = false;
  g.globalAlpha = 1; g.drawImage(card.photo, 0, 0, card.canvas.width, card.canvas.height);
  const dets = (S.review.byImage[imageId] || []).filter(visible).sort((a, b) => a.score - b.score);
  for (const d of dets) { g.globalAlpha = d.id === S.selected ? 0.75 : 0.4; g.drawImage(card.masks[d.id].t.canvas, 0, 0, card.canvas.width, card.canvas.height); }
  g.globalAlpha = 1; g.font = "12px system-ui"; g.textAlign = "center";
  for (const d of dets) {
    const a = card.masks[d.id].anchor; if (!a) continue;
    g.fillStyle = d.id === S.selected ? "#ffff00" : "#fff";
    g.fillText(`${className(d.category_id)} ${d.score.toFixed(2)}${d.status === "accepted" ? " \u2713" : ""}`, a[0] * s, a[1] * s);
  }
  const all = (S.review.byImage[imageId] || []).length;
  card.info.textContent = `${card.im.file_name}: ${dets.length} shown of ${all}`;
  card.canvas.dataset.shown = dets.length;
}

function pick(imageId, ev) {
  const card = S.cards[imageId], r = card.canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) * (card.canvas.width / r.width) / card.scale, y = (ev.clientY - r.top) * (card.canvas.height / r.height) / card.scale;
  const hits = (S.review.byImage[imageId] || []).filter((d) => (visible(d) || d.status === "rejected") && card.masks[d.id].t.hit(x, y));
  hits.sort((a, b) => (visible(b) - visible(a)) || (b.score - a.score));
  select(hits.length ? hits[0].id : null);
  $("det-panel").dataset.picks = Number($("det-panel").dataset.picks || 0) + 1; // clicks handled so far
}

function select(id) {
  const prev = S.selected; S.selected = id;
  const det = id === null ? null : S.review.detections[id];
  $("det-panel").hidden = det === null; $("det-panel").dataset.id = det ? det.id : "";
  if (det) {
    $("det-title").textContent = `detection #${det.id}`;
    $("det-info").textContent = `score ${det.score.toFixed(3)} · ${det.status || "undecided"}`;
    $("det-class").value = det.category_id;
  }
  for (const d of [prev, id]) if (d !== null && d !== undefined) drawCard(S.review.detections[d].image_id);
}

async function decide(body) {
  if (S.selected === null) throw new Error("click a detection first");
  const row = await api("/api/review/decide", { id: S.selected, ...body });
  const d = S.review.detections[row.id];
  if (d.category_id !== row.category_id) { // recolour the mask for its new class
    const m = S.cards[d.image_id].masks[d.id]; m.t = await tinted(m.url, PALETTE[(row.category_id - 1) % PALETTE.length]);
  }
  Object.assign(d, row); select(row.id); renderReview();
}
$("accept").addEventListener("click", guard(() => decide({ status: "accepted" })));
$("reject").addEventListener("click", guard(() => decide({ status: "rejected" })));
$("reset").addEventListener("click", guard(() => decide({ status: "" })));
$("det-class").addEventListener("change", guard(() => decide({ category_id: Number($("det-class").value) })));
document.addEventListener("keydown", (ev) => {
  if ($("panel-review").hidden || ["INPUT", "SELECT"].includes(ev.target.tagName) || S.selected === null) return;
  if (ev.key === "a") guard(() => decide({ status: "accepted" }))();
  if (ev.key === "r") guard(() => decide({ status: "rejected" }))();
});

function setMin(v) {
  if (!Number.isFinite(v) || v < 0 || v > 1) { message("the minimum score must be between 0 and 1"); return; }
  S.min = v; $("min-score").value = v; $("min-score-num").value = v; renderReview();
}
$("min-score").addEventListener("input", () => setMin(Number($("min-score").value)));
$("min-score-num").addEventListener("change", () => setMin(Number($("min-score-num").value)));

function renderReview() {
  if (!S.review) return;
  for (const id of Object.keys(S.cards)) drawCard(Number(id));
  const k = kept(), counts = {};
  for (const d of k) counts[d.category_id] = (counts[d.category_id] || 0) + 1;
  $("shown-count").textContent = `${k.length} of ${S.review.detections.length} detections kept`;
  $("shown-count").dataset.kept = k.length;
  $("counts").innerHTML = "<tr><th>class</th><th>kept</th></tr>" + S.review.categories.map((c) =>
    `<tr data-class-id="${c.id}"><td><span class="swatch" style="background:${PALETTE[(c.id - 1) % PALETTE.length]}"></span>${c.name}</td><td>${counts[c.id] || 0}</td></tr>`).join("");
}

// ---------- export
function updateExportInfo() {
  $("export-min").textContent = minScore();
  $("export-count").textContent = S.review ? kept().length : "(open Review first)";
}
$("export").addEventListener("click", guard(async () => {
  const r = await api("/api/export", { min_score: minScore() });
  $("export-result").textContent = `wrote ${r.detections} detections:\n${r.results}\n${r.references}\nper class: ` +
    Object.entries(r.per_class).map(([c, n]) => `${S.review ? className(Number(c)) : c}: ${n}`).join(", ");
  $("export-result").dataset.done = "1";
  message("exported", true);
}));

guard(loadState)();
