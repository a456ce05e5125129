// idforge studio: wires the page together. Top to bottom: state, the key and credits, the method and its
// schema-driven form, input images, free previews, generation as a v2 job (queue, progress, cancel), the gallery
// (history in IndexedDB, PNG download with the recipe, seed again / vary, compare), restoring from a PNG and
// ComfyUI workflows (a dropped workflow's free plan, one image zone per LoadImage node, run as a /v2/workflow job).

import { Api, ApiError } from "./api.js";
import { fieldsFor, loadSchema, readControl, renderField, writeControl } from "./schema.js";
import { asciiJson, readText, toPng, withText } from "./png.js";
import { imageRecipe, recipeToForm, summaryLine } from "./recipe.js";
import { history } from "./history.js";
import { workflowFromJson, workflowFromPng, workflowImages } from "./workflow.js";

const $ = (selector) => document.querySelector(selector);
// slug -> title and slug -> {title, previews, recipe_methods}: the server's method registry (the x-idforge-method
// of each /v2/<slug> operation); the page names no method itself
const METHOD_NAMES = {};
const METHOD_INFO = {};
const ZONES = [
  { field: "face_image", label: "Reference face(s)", multiple: true, help: "One or several photos of the same person.", helpOne: "A photo of the person." },
  { field: "pose_image", label: "Pose image", help: "The photo whose face position (and depth) the result follows." },
  { field: "mask_image", label: "Mask", help: "White where the identity applies.", advanced: true },
  { field: "kps_image", label: "Keypoint image", help: "An already drawn keypoint image (instead of a pose photo).", advanced: true },
  { field: "negative_image", label: "Negative image", help: "What the CLIP branch should move away from.", advanced: true },
];
const POLL_MS = 250;
const WORKFLOW = "workflow"; // the gallery's slug of a workflow job's images (not a method of the form)

const state = {
  schema: null,
  slug: "instantid",
  fields: {},
  values: {}, // per method: the last values of its controls
  images: { face_image: [], pose_image: null, mask_image: null, kps_image: null, negative_image: null },
  job: null,
  gallery: [],
  compare: [],
  styles: [],
  version: "",
  workflow: null, // the dropped ComfyUI workflow: {workflow, name, plan, images: {node id: image}}
};

const api = new Api((credits) => {
  $("#credits").textContent = `Credits: ${credits}`;
});

// -- messages --------------------------------------------------------------------------------------------------
function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function clearFieldErrors() {
  document.querySelectorAll(".field-error").forEach((el) => { el.textContent = ""; });
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

// An API field name ("extra_face_images[1]", "width") -> the element that shows its error.
function fieldErrorTarget(field) {
  const base = field.replace(/\[.*$/, "").split(".")[0];
  const name = base === "extra_face_images" ? "face_image" : base;
  return { slot: document.getElementById(`error-${name}`), control: document.getElementById(`param-${name}`) || document.getElementById(name) || document.getElementById(`zone-${name}`) };
}

function reportError(err) {
  if (!(err instanceof ApiError)) {
    showError(String(err.message || err));
    return;
  }
  if (err.status === 401) $("#api-key").focus();
  if (err.field) {
    const { slot, control } = fieldErrorTarget(err.field);
    if (slot) {
      slot.textContent = withoutField(err.message);
      if (control) {
        control.setAttribute("aria-invalid", "true");
        const advanced = control.closest("details");
        if (advanced) advanced.open = true;
        control.focus({ preventScroll: false });
      }
      showError(`Please fix ${err.field}: ${withoutField(err.message)}`);
      return;
    }
  }
  showError(err.message);
}

// "extra_face_images[0]: no face found" -> "no face found", where the place already says which input it is.
function withoutField(message) {
  return message.replace(/^[a-z_]+(\[\d+\])?(\.[a-z_]+)*: /, "");
}

function setJobStatus(text) {
  $("#job-status").textContent = text;
}

// -- key and credits -------------------------------------------------------------------------------------------
async function refreshAccount() {
  if (!api.key) {
    $("#key-status").textContent = "No key yet: enter the key you were given.";
    $("#credits").textContent = "";
    return;
  }
  try {
    const account = await api.get("v1/account");
    $("#key-status").textContent = `Key ${account.name || account.key_id} is valid.`;
    $("#credits").textContent = `Credits: ${account.credits}`;
  } catch (err) {
    $("#key-status").textContent = "";
    reportError(err);
  }
}

function setupKey() {
  $("#api-key").value = api.key;
  $("#key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    api.setKey($("#api-key").value);
    showError("");
    await refreshAccount();
    schedulePreview();
  });
  $("#forget-key").addEventListener("click", () => {
    api.setKey("");
    $("#api-key").value = "";
    refreshAccount();
  });
}

// -- method and form -------------------------------------------------------------------------------------------
function currentControls() {
  return [...document.querySelectorAll("#params [name], #params-advanced [name]")];
}

function saveValues() {
  const saved = {};
  for (const control of currentControls()) saved[control.name] = readControl(control);
  state.values[state.slug] = saved;
}

function renderMethod(slug) {
  if (state.schema && state.fields.all) saveValues();
  state.slug = slug;
  document.querySelector(`input[name=method][value="${slug}"]`).checked = true;
  const fields = fieldsFor(state.schema, slug);
  state.fields = fields;
  for (const [container, list] of [[$("#params"), fields.basic], [$("#params-advanced"), fields.advanced]]) {
    container.replaceChildren(...list.map(renderField));
  }
  const saved = state.values[slug] || {};
  for (const control of currentControls()) if (control.name in saved && saved[control.name] !== undefined) writeControl(control, saved[control.name]);
  renderZones();
  renderStyles();
  document.title = `idforge studio · ${METHOD_NAMES[slug]}`;
  schedulePreview();
}

// One radio per registered method, in the server's order: a method added on the server appears here unchanged.
function renderMethodChoices() {
  const fieldset = document.querySelector("fieldset.methods");
  fieldset.querySelectorAll("label").forEach((label) => label.remove());
  for (const [path, item] of Object.entries(state.schema.paths)) {
    const info = item.post && item.post["x-idforge-method"];
    if (!path.startsWith("/v2/") || !info) continue;
    const slug = path.slice(4);
    METHOD_NAMES[slug] = info.title;
    METHOD_INFO[slug] = info;
    const label = document.createElement("label");
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "method";
    radio.value = slug;
    label.append(radio, ` ${info.title}`);
    fieldset.append(label);
  }
  if (!METHOD_NAMES[state.slug]) state.slug = Object.keys(METHOD_NAMES)[0];
  METHOD_NAMES[WORKFLOW] = "ComfyUI workflow"; // the gallery's name for a workflow's images
  setupMethods();
}

function setupMethods() {
  document.querySelectorAll("input[name=method]").forEach((radio) => {
    radio.addEventListener("change", () => { if (radio.checked) renderMethod(radio.value); });
  });
}

async function setupStyles() {
  if (!state.schema.paths["/v1/styles"]) return;
  try {
    const listing = await api.get("v1/styles");
    state.styles = Array.isArray(listing) ? listing : listing.styles || [];
  } catch {
    state.styles = [];
  }
}

function renderStyles() {
  const field = $("#style-field");
  const select = $("#style");
  const schemaStyle = state.fields.all.style;
  const names = schemaStyle && schemaStyle.choices ? schemaStyle.choices : state.styles.map((s) => s.name);
  field.hidden = names.length === 0;
  if (!names.length) return;
  const keep = select.value;
  select.replaceChildren(...names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    const info = state.styles.find((s) => s.name === name);
    option.textContent = info && info.description ? `${name}: ${info.description}` : name;
    return option;
  }));
  select.value = names.includes(keep) ? keep : names.includes("none") ? "none" : names[0];
  $("#style-hint").textContent = schemaStyle ? "Applied by the server." : "Applied to the prompt by the page.";
}

// The JSON body of the request (images as data URLs), and the same without images (for recipes and history).
function buildBody() {
  const body = { prompt: $("#prompt").value, base64: true };
  const negative = $("#negative_prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  for (const control of currentControls()) {
    const value = readControl(control);
    if (value !== undefined) body[control.name] = value;
  }
  const recipeBody = JSON.parse(JSON.stringify(body));
  const style = $("#style").value;
  if (!$("#style-field").hidden && style) {
    if (state.fields.all.style) body.style = recipeBody.style = style;
    else if (style !== "none") {
      applyStyle(body, style);
      recipeBody.studio_style = style; // the prompt as typed, and the template the page applied to it
    }
  }
  const all = state.fields.all;
  const refs = state.images.face_image;
  if (refs.length) body.face_image = refs[0].data;
  if (all.extra_face_images && refs.length > 1) body.extra_face_images = refs.slice(1).map((r) => r.data);
  for (const name of ["pose_image", "mask_image", "kps_image", "negative_image"]) {
    if (all[name] && state.images[name]) body[name] = state.images[name].data;
  }
  recipeBody.images = {
    face_image: refs.map((r) => r.name),
    ...Object.fromEntries(["pose_image", "mask_image", "kps_image", "negative_image"].filter((n) => all[n] && state.images[n]).map((n) => [n, state.images[n].name])),
  };
  return { body, recipeBody };
}

function applyStyle(body, name) {
  const style = state.styles.find((s) => s.name === name);
  if (!style || !style.prompt) return;
  const prompt = body.prompt.trim();
  body.prompt = (prompt ? style.prompt.replaceAll("{prompt}", prompt) : style.prompt.replaceAll("{prompt}", "")).trim().replace(/^[ ,]+|[ ,]+$/g, "");
  const negatives = [(body.negative_prompt || "").trim(), style.negative].filter(Boolean);
  if (negatives.length) body.negative_prompt = negatives.join(", ");
}

function applyValues(slug, values) {
  renderMethod(slug);
  if ("prompt" in values) $("#prompt").value = values.prompt;
  if ("negative_prompt" in values) $("#negative_prompt").value = values.negative_prompt || "";
  if ("style" in values && [...$("#style").options].some((o) => o.value === values.style)) $("#style").value = values.style;
  if ("studio_style" in values && [...$("#style").options].some((o) => o.value === values.studio_style)) $("#style").value = values.studio_style;
  for (const control of currentControls()) {
    if (control.name in values) writeControl(control, values[control.name]);
  }
  saveValues();
}

// -- input images ----------------------------------------------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, data: reader.result, url: URL.createObjectURL(file) });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function renderZones() {
  const container = $("#image-zones");
  const all = state.fields.all;
  const maxRefs = 1 + ((all.extra_face_images && all.extra_face_images.maxItems) || 0);
  const zones = ZONES.filter((zone) => all[zone.field]);
  const basic = zones.filter((z) => !z.advanced).map((z) => zoneElement(z, maxRefs));
  const more = zones.filter((z) => z.advanced);
  const children = [...basic];
  if (more.length) {
    const details = document.createElement("details");
    details.className = "more-images";
    details.open = more.some((z) => state.images[z.field]);
    const summary = document.createElement("summary");
    summary.textContent = `More images (${more.map((z) => z.label.toLowerCase()).join(", ")})`;
    details.append(summary, ...more.map((z) => zoneElement(z, maxRefs)));
    children.push(details);
  }
  container.replaceChildren(...children);
}

function zoneElement(zone, maxRefs) {
  const wrap = document.createElement("div");
  wrap.className = "zone";
  wrap.id = `zone-${zone.field}`;
  wrap.tabIndex = -1;
  const inputId = `file-${zone.field}`;
  const multiple = zone.multiple && maxRefs > 1;
  const required = state.fields.all[zone.field] && state.fields.all[zone.field].required;
  wrap.innerHTML = `
    <div class="zone-head">
      <label for="${inputId}" class="zone-label">${multiple ? zone.label : zone.label.replace("(s)", "")}${required ? " <span class=\"req\">(required)</span>" : ""}</label>
      <span class="hint">${multiple ? `${zone.help} Up to ${maxRefs}.` : zone.helpOne || zone.help} Drop ${multiple ? "files" : "a file"} here or choose.</span>
    </div>
    <input type="file" id="${inputId}" accept="image/*" ${multiple ? "multiple" : ""} aria-describedby="error-${zone.field}">
    <ul class="thumbs"></ul>
    <p class="field-error" id="error-${zone.field}" role="alert"></p>`;
  acceptImages(wrap, (files) => addImages(zone, files, maxRefs));
  const list = wrap.querySelector(".thumbs");
  const items = zone.multiple ? state.images[zone.field] : state.images[zone.field] ? [state.images[zone.field]] : [];
  items.forEach((item, index) => {
    const caption = zone.multiple && index === 0 ? `${item.name} (main)` : item.name;
    list.append(thumb(item, `${zone.label} ${index + 1}: ${item.name}`, caption, () => {
      if (zone.multiple) state.images[zone.field].splice(index, 1);
      else state.images[zone.field] = null;
      renderZones();
      schedulePreview();
    }));
  });
  return wrap;
}

// A zone's file input and drops (a drop on a zone is an input image, not a recipe or workflow for the page).
function acceptImages(wrap, onFiles) {
  const input = wrap.querySelector("input[type=file]");
  input.addEventListener("change", () => onFiles([...input.files]));
  wrap.addEventListener("dragover", (event) => { event.preventDefault(); wrap.classList.add("over"); });
  wrap.addEventListener("dragleave", () => wrap.classList.remove("over"));
  wrap.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();
    wrap.classList.remove("over");
    onFiles([...event.dataTransfer.files].filter((f) => f.type.startsWith("image/")));
  });
}

function thumb(item, alt, caption, onRemove) {
  const li = document.createElement("li");
  const img = document.createElement("img");
  img.src = item.url;
  img.alt = alt;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "quiet small";
  remove.textContent = "Remove";
  remove.setAttribute("aria-label", `Remove ${item.name}`);
  remove.addEventListener("click", onRemove);
  const text = document.createElement("span");
  text.textContent = caption;
  li.append(img, text, remove);
  return li;
}

async function addImages(zone, files, maxRefs) {
  if (!files.length) return;
  const loaded = await Promise.all(files.map(readFile));
  if (zone.multiple) {
    const all = [...state.images[zone.field], ...loaded];
    if (all.length > maxRefs) showError(`${METHOD_NAMES[state.slug]} takes up to ${maxRefs} reference images; the first ${maxRefs} are kept.`);
    state.images[zone.field] = all.slice(0, maxRefs);
  } else {
    state.images[zone.field] = loaded[0];
  }
  renderZones();
  const input = document.getElementById(`file-${zone.field}`);
  if (input) input.focus();
  schedulePreview();
}

// -- previews --------------------------------------------------------------------------------------------------
let previewTimer = null;
let previewSerial = 0;

function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(runPreview, 300);
}

function previewCard(title, src, message, status) {
  const figure = document.createElement("figure");
  figure.className = `preview ${status || ""}`;
  if (src) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = title;
    figure.append(img);
  }
  const caption = document.createElement("figcaption");
  const strong = document.createElement("strong");
  strong.textContent = title;
  caption.append(strong);
  if (message) {
    const text = document.createElement("span");
    const badge = { no_face: "No face: ", several_faces: "Several faces: ", one_face: "OK: " }[status] || "";
    text.textContent = badge + withoutField(message);
    caption.append(text);
  }
  figure.append(caption);
  return figure;
}

// The preview's verdict, shown in the preview panel and, in one line, next to Generate (on a phone the panel is
// below the form).
function setPreviewStatus(text, kind = "muted") {
  const status = $("#preview-status");
  status.textContent = text;
  status.className = kind;
  const summary = $("#preview-summary");
  summary.hidden = !text;
  summary.className = kind;
  summary.querySelector("span").textContent = text;
}

async function runPreview() {
  const serial = ++previewSerial;
  const faces = $("#preview-faces");
  const extra = $("#preview-extra");
  const refs = state.images.face_image;
  if (!refs.length) {
    faces.replaceChildren();
    extra.replaceChildren();
    setPreviewStatus("Add a reference face to see what the model will use.");
    return;
  }
  if (!api.key) {
    setPreviewStatus("Enter your API key to see previews (they are free).");
    return;
  }
  setPreviewStatus("Looking for faces…");
  const all = state.fields.all;
  const values = Object.fromEntries(currentControls().map((c) => [c.name, readControl(c)]));
  const body = { method: state.slug, face_image: refs[0].data, extra_face_images: all.extra_face_images ? refs.slice(1).map((r) => r.data) : [] };
  if (all.pose_image && state.images.pose_image) body.pose_image = state.images.pose_image.data;
  if (all.kps_image && state.images.kps_image) body.kps_image = state.images.kps_image.data;
  if (values.pose_fallback) body.pose_fallback = true;
  if (values.width !== undefined && values.height !== undefined) { body.width = values.width; body.height = values.height; }
  try {
    const result = await api.post("v1/preview/faces", body);
    if (serial !== previewSerial) return;
    const cards = result.references.map((ref, i) => previewCard(i === 0 ? "Reference 1 (main)" : `Reference ${i + 1}`, `data:image/jpeg;base64,${ref.annotated}`, ref.message, ref.status));
    if (result.pose) cards.push(previewCard("Pose image", `data:image/jpeg;base64,${result.pose.annotated}`, result.pose.message, result.pose.status));
    faces.replaceChildren(...cards);
    const more = [];
    if (result.keypoints) {
      const from = { pose_image: "from the pose image", face_image: "from the main reference", kps_image: "your keypoint image" }[result.keypoints.source];
      more.push(previewCard(`Keypoints IdentityNet sees (${from}, ${result.keypoints.width}×${result.keypoints.height})`, `data:image/png;base64,${result.keypoints.image}`, "", "kps"));
    }
    extra.replaceChildren(...more);
    const notes = [...result.problems.map((p) => `Generation would fail: ${p}`), ...result.warnings];
    const kind = result.problems.length ? "problem" : result.warnings.length ? "warning" : "muted";
    setPreviewStatus(notes.length ? notes.join(" ") : "Faces found. Ready to generate.", kind);
    if ((METHOD_INFO[state.slug].previews || []).includes("depth") && state.images.pose_image) {
      const depthBody = { pose_image: state.images.pose_image.data };
      if (body.width) { depthBody.width = body.width; depthBody.height = body.height; }
      const depth = await api.post("v1/preview/depth", depthBody);
      if (serial !== previewSerial) return;
      extra.append(previewCard(`Depth map (${depth.width}×${depth.height})`, `data:image/png;base64,${depth.image}`, "", "depth"));
    }
  } catch (err) {
    if (serial !== previewSerial) return;
    setPreviewStatus(`Preview failed: ${err.message}`, "problem");
    if (err.field) reportError(err);
  }
}

// -- generation ------------------------------------------------------------------------------------------------
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setBusy(busy) {
  for (const [run, stop] of [["#generate", "#cancel"], ["#workflow-run", "#workflow-cancel"]]) {
    if (!$(run)) continue;
    $(run).disabled = busy;
    $(run).setAttribute("aria-busy", String(busy));
    $(stop).hidden = !busy;
  }
  if (!busy) $("#job-progress").hidden = true;
}

function showProgress(status) {
  const bar = $("#job-progress");
  if (status.status === "QUEUED") {
    bar.hidden = true;
    setJobStatus(status.position ? `Queued: position ${status.position} in the queue.` : "Queued.");
  } else if (status.status === "PROCESSING") {
    const total = status.total_steps || 0;
    const step = status.step || 0;
    bar.hidden = false;
    bar.max = Math.max(total, 1);
    bar.value = step;
    bar.setAttribute("aria-valuetext", `step ${step} of ${total}`);
    setJobStatus(total ? `Generating: step ${step} / ${total}` : "Generating: loading models…");
  }
}

async function generate(overrides = null) {
  clearFieldErrors();
  showError("");
  if (overrides) applyValues(overrides.slug, overrides.values);
  saveValues();
  const { body, recipeBody } = buildBody();
  if (!api.key) { showError("Enter your API key at the top first."); $("#api-key").focus(); return; }
  const slug = state.slug;
  const result = await runJob(`v2/${slug}`, body, reportError);
  if (!result) return;
  await addResult(slug, recipeBody, result);
  setJobStatus(`Done: ${result.output.images.length} image(s), seed ${result.seed}.`);
}

// Submit a v2 job and follow it (queue position, progress) to its end: the result body when it completed, else
// null, its error given to `report` (the form's fields, or the workflow panel).
async function runJob(path, body, report) {
  setBusy(true);
  setJobStatus("Submitting…");
  try {
    const job = await api.post(path, body);
    state.job = { ...job, canceled: false };
    showProgress(job);
    let status = job;
    while (true) {
      await sleep(POLL_MS);
      status = await api.get(job.status_url);
      showProgress(status);
      if (["COMPLETED", "FAILED", "CANCELED"].includes(status.status)) break;
    }
    if (status.status === "COMPLETED") return { ...(await api.get(job.response_url)), request_id: job.request_id };
    if (status.status === "CANCELED") {
      setJobStatus(`Canceled. ${status.error && status.error !== "canceled" ? status.error : "No credits were charged."}`);
    } else {
      setJobStatus("Failed.");
      report(new ApiError(status.error_status || 400, status.error || "the job failed", status.field));
    }
  } catch (err) {
    setJobStatus("");
    report(err);
  } finally {
    state.job = null;
    setBusy(false);
  }
  return null;
}

async function cancel() {
  const job = state.job;
  if (!job) return;
  $("#cancel").disabled = true;
  setJobStatus("Canceling…");
  try {
    const answer = await api.post(job.cancel_url || `${job.response_url}/cancel`);
    if (answer && answer.message) setJobStatus(answer.message);
  } catch (err) {
    reportError(err);
  } finally {
    $("#cancel").disabled = false;
  }
}

// -- gallery ---------------------------------------------------------------------------------------------------
function b64ToBlob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

async function addResult(slug, recipeBody, result) {
  const images = result.output.images || [result.output.image];
  const created = Date.now();
  for (let index = 0; index < images.length; index++) {
    const recipe = imageRecipe({ slug, request: recipeBody, result, index, version: state.version, methods: METHOD_INFO });
    await keepImage(slug, result, images[index], recipe, { id: `${result.request_id || created}-${index}`, created: created + index });
  }
  renderGallery();
}

// One gallery image, kept in the history (IndexedDB) too; `extra`: its id, time and, for a workflow, its node.
async function keepImage(slug, result, b64, recipe, extra) {
  const identity = recipe.identity && recipe.identity.images ? recipe.identity.images[0] : null;
  const item = {
    slug,
    seed: recipe.seed,
    image: b64ToBlob(b64, result.output.mime_type || "image/jpeg"),
    metrics: result.metrics || {},
    identity,
    warnings: result.warnings || [],
    recipe,
    ...extra,
  };
  await history.put(item);
  state.gallery.push(item);
}

function timingText(metrics) {
  const parts = [];
  for (const [name, value] of Object.entries(metrics || {})) {
    if (typeof value === "number") parts.push(`${name.replace(/_s$/, "")} ${value.toFixed(2)} s`);
  }
  return parts.join(", ");
}

function identityText(identity) {
  if (!identity) return "";
  if (identity.status === "scored" && typeof identity.score === "number") return `Identity ${identity.score.toFixed(3)}`;
  return `Identity: no face${identity.reason ? ` (${identity.reason})` : ""}`;
}

function renderGallery() {
  const list = $("#gallery");
  $("#gallery-count").textContent = state.gallery.length ? `(${state.gallery.length})` : "";
  const items = [...state.gallery].reverse();
  list.replaceChildren(...items.map(galleryCard));
  renderCompare();
}

function galleryCard(item) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = item.id;
  const url = item.url || (item.url = URL.createObjectURL(item.image));
  const prompt = (item.recipe.request && item.recipe.request.body.prompt) || (item.recipe.params && item.recipe.params.prompt) || "";
  const img = document.createElement("img");
  img.src = url;
  img.alt = `${METHOD_NAMES[item.slug]} result, seed ${item.seed}: ${prompt}`;
  const meta = document.createElement("dl");
  const rows = [["Method", METHOD_NAMES[item.slug]], ["Node", item.node ? `${item.node} (${item.nodeTitle})` : ""], ["Seed", String(item.seed)], ["Time", timingText(item.metrics)]];
  const identity = identityText(item.identity);
  if (identity) rows.push(["Score", identity]);
  for (const [k, v] of rows) {
    if (!v) continue;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dd.className = `meta-${k.toLowerCase()}`;
    meta.append(dt, dd);
  }
  const p = document.createElement("p");
  p.className = "card-prompt";
  p.textContent = prompt;
  const buttons = document.createElement("div");
  buttons.className = "card-actions";
  const action = (text, label, handler, cls = "") => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.className = cls;
    button.setAttribute("aria-label", `${label} (seed ${item.seed})`);
    button.addEventListener("click", handler);
    buttons.append(button);
    return button;
  };
  action("Download PNG", "Download PNG with recipe", () => downloadPng(item), "download");
  if (item.slug !== WORKFLOW) { // a workflow runs again from its panel, with its images
    action("Again", "Again with this seed", () => generate(formFromItem(item, true)), "again");
    action("Vary seed", "Same parameters, new random seed", () => generate(formFromItem(item, false)), "vary");
  }
  const compare = action("Compare", "Select for side-by-side compare", () => toggleCompare(item.id), "compare-toggle");
  compare.setAttribute("aria-pressed", String(state.compare.includes(item.id)));
  action("Delete", "Delete from history", () => removeItem(item.id), "quiet");
  li.append(img, meta, p, buttons);
  if (item.warnings && item.warnings.length) {
    const warn = document.createElement("p");
    warn.className = "warning";
    warn.textContent = item.warnings.join(" ");
    li.append(warn);
  }
  return li;
}

// The form values that made `item` ("again": its own seed, or its batch's for a FaceID batch), or a new seed.
function formFromItem(item, again) {
  const values = { ...(item.recipe.request ? item.recipe.request.body : {}) };
  delete values.images;
  if (!again) values.seed = -1;
  return { slug: item.slug, values };
}

async function removeItem(id) {
  await history.remove(id);
  state.gallery = state.gallery.filter((i) => i.id !== id);
  state.compare = state.compare.filter((c) => c !== id);
  renderGallery();
}

async function downloadPng(item) {
  try {
    const png = await toPng(item.image);
    const tagged = withText(png, { idforge: asciiJson(item.recipe), parameters: summaryLine(item.recipe).replace(/[^\x00-\xff]/g, "?") });
    const url = URL.createObjectURL(new Blob([tagged], { type: "image/png" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = `idforge_${item.slug}_${item.seed}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    showError(`Could not make the PNG: ${err.message}`);
  }
}

function toggleCompare(id) {
  if (state.compare.includes(id)) state.compare = state.compare.filter((c) => c !== id);
  else state.compare = [...state.compare, id].slice(-2);
  renderGallery();
}

function flatBody(item) {
  const body = item.recipe.request ? { ...item.recipe.request.body } : { ...(item.recipe.params || {}) };
  delete body.images;
  body.method = METHOD_NAMES[item.slug];
  body.seed = item.seed; // the image's own seed (in a FaceID batch, the batch's seed + its index)
  return body;
}

function renderCompare() {
  const panel = $("#compare");
  const items = state.compare.map((id) => state.gallery.find((i) => i.id === id)).filter(Boolean);
  panel.hidden = items.length === 0;
  if (!items.length) return;
  const head = document.createElement("div");
  head.className = "compare-head";
  const title = document.createElement("h3");
  title.textContent = items.length === 2 ? "Side by side" : "Compare: select one more image";
  const close = document.createElement("button");
  close.type = "button";
  close.className = "quiet";
  close.textContent = "Close compare";
  close.addEventListener("click", () => { state.compare = []; renderGallery(); });
  head.append(title, close);
  const row = document.createElement("div");
  row.className = "compare-row";
  for (const item of items) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = `seed ${item.seed}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `${METHOD_NAMES[item.slug]}, seed ${item.seed}${item.identity ? ", " + identityText(item.identity) : ""}`;
    figure.append(img, caption);
    row.append(figure);
  }
  panel.replaceChildren(head, row);
  if (items.length === 2) {
    const [a, b] = items.map(flatBody);
    const names = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((n) => JSON.stringify(a[n]) !== JSON.stringify(b[n]));
    const table = document.createElement("table");
    table.className = "diff";
    table.innerHTML = "<caption>Parameters that differ</caption><thead><tr><th scope=\"col\">Parameter</th><th scope=\"col\">Left</th><th scope=\"col\">Right</th></tr></thead>";
    const tbody = document.createElement("tbody");
    for (const name of names.length ? names : ["(none: same parameters)"]) {
      const tr = document.createElement("tr");
      for (const text of [name, a[name], b[name]]) {
        const td = document.createElement(text === name ? "th" : "td");
        if (text === name) td.scope = "row";
        td.textContent = text === undefined ? "—" : typeof text === "string" ? text : JSON.stringify(text);
        tr.append(td);
      }
      tbody.append(tr);
    }
    table.append(tbody);
    panel.append(table);
  }
}

// -- ComfyUI workflows -----------------------------------------------------------------------------------------
// A dropped workflow is planned for free (POST v1/workflow/plan: methods, parameters, the LoadImage nodes that
// need an image, outputs, price); the panel takes one image per LoadImage node and runs it as a /v2/workflow job.
function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

async function openWorkflow(workflow, name) {
  state.workflow = { workflow, name, plan: null, images: {} };
  $(".inputs").classList.add("workflow-open");
  setPreviewStatus("The previews follow the method form; the workflow panel shows what the workflow will do.");
  renderWorkflow(`Planning ${name}…`);
  try {
    state.workflow.plan = await api.post("v1/workflow/plan", { workflow, name });
    renderWorkflow();
  } catch (err) {
    renderWorkflow();
    workflowError(err);
  }
}

function closeWorkflow() {
  state.workflow = null;
  $(".inputs").classList.remove("workflow-open");
  $("#workflow-panel").hidden = true;
  schedulePreview();
}

function renderWorkflow(status = "") {
  const { name, plan } = state.workflow;
  const panel = $("#workflow-panel");
  panel.hidden = false;
  const head = element("div", "workflow-head");
  const title = element("h2", "", "ComfyUI workflow ");
  title.id = "workflow-title";
  title.append(element("span", "muted", plan ? `${name} (${plan.format})` : name));
  const close = element("button", "quiet", "Close workflow");
  close.type = "button";
  close.addEventListener("click", closeWorkflow);
  head.append(title, close);
  const error = element("div", "error-box");
  error.id = "workflow-error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  panel.replaceChildren(head, ...(plan ? workflowPlan(plan) : [element("p", "muted", status)]), error);
}

// What the user does first (the images, Run with its price), then what the workflow will do.
function workflowPlan(plan) {
  const runs = plan.generations.map((g) => `KSampler ${g.sampler} → ${methodTitle(g.method)}`).join("; ");
  const outputs = plan.outputs.map((o) => `${o.node} (${o.title})`).join(", ");
  const parts = [element("p", "hint", `Runs as ${runs}; results: output node ${outputs}.`)];
  const zones = element("div", "zones");
  zones.id = "workflow-zones";
  zones.append(...plan.images.map(workflowZone));
  if (plan.images.length) parts.push(element("h3", "", "Images to give"), zones);
  const explain = element("details", "advanced");
  explain.append(element("summary", "", "What each node does (--explain)"), element("pre", "explain", plan.explain));
  const actions = element("div", "actions");
  const run = element("button", "primary", "Run workflow");
  run.type = "button";
  run.id = "workflow-run";
  run.addEventListener("click", runWorkflow);
  const cancelButton = element("button", "", "Cancel");
  cancelButton.type = "button";
  cancelButton.id = "workflow-cancel";
  cancelButton.hidden = true;
  cancelButton.addEventListener("click", cancel);
  const price = element("span", "workflow-price", `Costs ${plan.price} credit${plan.price === 1 ? "" : "s"}`);
  price.id = "workflow-price";
  actions.append(run, cancelButton, price);
  parts.push(actions, ...plan.generations.map(generationBlock), explain);
  return parts;
}

// The studio's name of a method a workflow runs as ("insta_depth" is the form's "insta-depth").
function methodTitle(method) {
  return METHOD_NAMES[method.replace(/_/g, "-")] || method;
}

// One generation: the method it runs as and its parameters, each with the node input it came from (for `set`).
function generationBlock(gen) {
  const block = element("div", "workflow-generation");
  block.append(element("h3", "", `KSampler ${gen.sampler} → ${methodTitle(gen.method)}: parameters`));
  const table = element("table", "diff params-table");
  table.innerHTML = "<thead><tr><th scope=\"col\">Parameter</th><th scope=\"col\">Value</th><th scope=\"col\">From node</th></tr></thead>";
  const body = element("tbody");
  for (const [param, value] of Object.entries(gen.params)) {
    const row = element("tr");
    const name = element("th", "", param);
    name.scope = "row";
    row.append(name, element("td", "", typeof value === "string" ? value : JSON.stringify(value)), element("td", "muted", gen.sources[param] || ""));
    body.append(row);
  }
  table.append(body);
  block.append(table);
  return block;
}

// The drop zone of one LoadImage node: its image goes to /v2/workflow as images[node id].
function workflowZone(image) {
  const wrap = element("div", "zone");
  wrap.id = `workflow-zone-${image.node}`;
  wrap.tabIndex = -1;
  const inputId = `workflow-file-${image.node}`;
  const head = element("div", "zone-head");
  const label = element("label", "zone-label", `Node ${image.node}: ${image.title}`);
  label.htmlFor = inputId;
  head.append(label, element("span", "hint", `Feeds ${image.feeds.join(", ")} (the workflow names ${image.filename}). Drop a file here or choose.`));
  const input = element("input");
  input.type = "file";
  input.id = inputId;
  input.accept = "image/*";
  const list = element("ul", "thumbs");
  const given = state.workflow.images[image.node];
  if (given) {
    list.append(thumb(given, `Node ${image.node}: ${given.name}`, given.name, () => {
      delete state.workflow.images[image.node];
      renderWorkflow();
    }));
  }
  wrap.append(head, input, list);
  acceptImages(wrap, async (files) => {
    if (!files.length) return;
    state.workflow.images[image.node] = await readFile(files[0]);
    renderWorkflow();
  });
  return wrap;
}

// A 400 at the panel, in plain words (it names node.input, or images.<node> for a missing image).
function workflowError(err) {
  const box = $("#workflow-error");
  box.textContent = err.field ? `${err.field}: ${withoutField(err.message)}` : err.message;
  box.hidden = false;
  const node = err.field && err.field.match(/^images\.(\d+)$|^(\d+)\.image$/);
  const zone = node && document.getElementById(`workflow-zone-${node[1] || node[2]}`);
  if (zone) zone.setAttribute("aria-invalid", "true");
}

async function runWorkflow() {
  const { workflow, name, images } = state.workflow;
  if (!api.key) { workflowError(new Error("Enter your API key at the top first.")); $("#api-key").focus(); return; }
  $("#workflow-error").hidden = true;
  const body = { workflow, name, images: Object.fromEntries(Object.entries(images).map(([node, image]) => [node, image.data])) };
  const result = await runJob("v2/workflow", body, workflowError);
  if (!result) return;
  const titles = Object.fromEntries(state.workflow.plan.outputs.map((o) => [o.node, o.title]));
  const entries = workflowImages(result);
  for (const entry of entries) {
    await keepImage(WORKFLOW, result, entry.image, entry.recipe, { id: `${result.request_id}-${entry.node}-${entry.index}`, created: Date.now() + entry.index, node: entry.node, nodeTitle: titles[entry.node] || "" });
  }
  renderGallery();
  setJobStatus(`Done: ${entries.length} image(s) from ${name}.`);
}

// -- restore from a dropped PNG --------------------------------------------------------------------------------
async function restoreFrom(file) {
  showError("");
  const bytes = new Uint8Array(await file.arrayBuffer());
  const texts = await readText(bytes);
  const workflow = texts ? (texts.idforge ? null : workflowFromPng(texts)) : workflowFromJson(bytes);
  if (workflow) { await openWorkflow(workflow, file.name); return; }
  if (!texts) { showError(`${file.name}: neither a PNG made by idforge nor a ComfyUI workflow (.json or PNG).`); return; }
  if (!texts.idforge) { showError(`${file.name}: this PNG has no idforge recipe (no "idforge" text chunk) and no ComfyUI workflow.`); return; }
  let recipe;
  try { recipe = JSON.parse(texts.idforge); } catch { showError(`${file.name}: its idforge recipe is not valid JSON.`); return; }
  try {
    const { slug, values, ignored, notes } = recipeToForm(recipe, (s) => fieldsFor(state.schema, s).all, METHOD_INFO);
    if (state.workflow) closeWorkflow(); // the form again, with the recipe's values
    applyValues(slug, values);
    const restored = Object.keys(values).length;
    const extra = ignored.length ? ` Not used by ${METHOD_NAMES[slug]}: ${ignored.join(", ")}.` : "";
    setJobStatus(`Restored ${restored} parameters of a ${METHOD_NAMES[slug]} image (seed ${values.seed ?? "?"}) from ${file.name}. Images are not stored in PNGs: add your references.${extra} ${notes.join(" ")}`.trim());
  } catch (err) {
    showError(`${file.name}: ${err.message}`);
  }
}

function setupRestore() {
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = [...(event.dataTransfer ? event.dataTransfer.files : [])][0];
    if (file) restoreFrom(file);
  });
  $("#restore-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) restoreFrom(file);
    event.target.value = "";
  });
}

// -- start -----------------------------------------------------------------------------------------------------
async function checkHealth() {
  try {
    const response = await fetch("health");
    const health = await response.json();
    const banner = $("#banner");
    if (health.status && !["ok", "ready"].includes(health.status)) {
      banner.textContent = `Server status: ${health.status}${health.loading ? ` (loading ${[].concat(health.loading).join(", ")})` : ""}. Jobs will wait until it is ready.`;
      banner.hidden = false;
      setTimeout(checkHealth, 3000);
    } else {
      banner.hidden = true;
    }
  } catch {
    // the schema load reports an unreachable server
  }
}

async function start() {
  setupKey();
  setupRestore();
  $(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    $("#generate").focus();
  });
  $("#generate").addEventListener("click", () => generate());
  $("#cancel").addEventListener("click", cancel);
  $("#clear-history").addEventListener("click", async () => {
    await history.clear();
    state.gallery = [];
    state.compare = [];
    renderGallery();
  });
  $("#prompt").addEventListener("input", () => clearFieldErrors());
  try {
    state.schema = await loadSchema();
  } catch (err) {
    showError(`Cannot load the API schema: ${err.message}`);
    return;
  }
  state.version = state.schema.info ? state.schema.info.version : "";
  renderMethodChoices();
  await setupStyles();
  renderMethod(state.slug);
  document.addEventListener("change", (event) => {
    if (event.target.matches && event.target.matches("#params-advanced [name=pose_fallback], [name=width], [name=height]")) schedulePreview();
  });
  try {
    state.gallery = await history.all();
  } catch (err) {
    showError(`History is unavailable in this browser: ${err.message}`);
  }
  renderGallery();
  await Promise.all([refreshAccount(), checkHealth()]);
  document.body.dataset.ready = "true";
}

start();
