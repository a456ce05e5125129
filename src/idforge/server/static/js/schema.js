// Form controls built from the server's own OpenAPI schema, so the page and the API never drift: every
// parameter's type, range, step, choices, default and help text come from the request body of POST /v2/{method}.

export const IMAGE_FIELDS = ["face_image", "extra_face_images", "pose_image", "kps_image", "mask_image", "negative_image"];
// Fields the page handles itself (text boxes, images, delivery), or aliases of fields it already shows.
const OWN_FIELDS = new Set(["prompt", "negative_prompt", "style", "base64", "webhook_url", ...IMAGE_FIELDS]);
const ALIASES = new Set(["samples", "steps", "guidance", "identity_strength", "adapter_strength"]);
// Shown up front; every other parameter is folded into "Advanced".
const BASIC = ["adapter", "num_inference_steps", "guidance_scale", "seed", "width", "height", "num_images", "batch"];

export async function loadSchema() {
  const response = await fetch("openapi.json");
  if (!response.ok) throw new Error(`openapi.json: HTTP ${response.status}`);
  return response.json();
}

function resolve(schema, node) {
  if (node && node.$ref) return resolve(schema, schema.components.schemas[node.$ref.split("/").pop()]);
  return node;
}

export function bodySchema(schema, slug) {
  const operation = schema.paths[`/v2/${slug}`]?.post;
  if (!operation) throw new Error(`the server has no POST /v2/${slug}`);
  return resolve(schema, operation.requestBody.content["application/json"].schema);
}

// One field descriptor from a JSON-schema property (pydantic writes nullable fields as anyOf [T, null]).
function describe(schema, name, prop, required) {
  let node = resolve(schema, prop);
  let nullable = false;
  const variants = node.anyOf || node.oneOf;
  if (variants) {
    const real = variants.filter((v) => v.type !== "null").map((v) => resolve(schema, v));
    nullable = real.length < variants.length;
    node = { ...real[0], ...node, anyOf: undefined, oneOf: undefined, type: real[0]?.type, enum: real[0]?.enum };
    for (const key of ["minimum", "maximum", "multipleOf", "exclusiveMinimum", "exclusiveMaximum"]) {
      if (real[0] && real[0][key] !== undefined) node[key] = real[0][key];
    }
  }
  let kind = node.type;
  if (node.enum || node.const !== undefined) kind = "enum";
  return {
    name,
    kind,
    title: prop.title || node.title || name,
    description: prop.description || node.description || "",
    default: prop.default !== undefined ? prop.default : node.default,
    minimum: node.minimum ?? (node.exclusiveMinimum !== undefined ? node.exclusiveMinimum : undefined),
    maximum: node.maximum ?? node.exclusiveMaximum,
    multipleOf: node.multipleOf,
    choices: node.enum || (node.const !== undefined ? [node.const] : undefined),
    nullable,
    required: required.includes(name),
    maxItems: node.maxItems,
  };
}

export function fieldsFor(schema, slug) {
  const body = bodySchema(schema, slug);
  const required = body.required || [];
  const all = Object.entries(body.properties || {}).map(([name, prop]) => describe(schema, name, prop, required));
  const params = all.filter((f) => !OWN_FIELDS.has(f.name) && !ALIASES.has(f.name));
  params.sort((a, b) => rank(a.name) - rank(b.name));
  return {
    all: Object.fromEntries(all.map((f) => [f.name, f])),
    basic: params.filter((f) => BASIC.includes(f.name)),
    advanced: params.filter((f) => !BASIC.includes(f.name)),
  };
}

function rank(name) {
  const index = BASIC.indexOf(name);
  return index < 0 ? BASIC.length : index;
}

function label(name) {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function rangeText(field) {
  const parts = [];
  if (field.minimum !== undefined && field.maximum !== undefined) parts.push(`${field.minimum} to ${field.maximum}`);
  else if (field.minimum !== undefined) parts.push(`at least ${field.minimum}`);
  else if (field.maximum !== undefined) parts.push(`at most ${field.maximum}`);
  if (field.multipleOf) parts.push(`multiple of ${field.multipleOf}`);
  if (field.nullable) parts.push("empty = automatic");
  if (field.default !== undefined && field.default !== null) parts.push(`default ${JSON.stringify(field.default)}`);
  return parts.join(", ");
}

// A labelled control (with its help text and an error slot) for one field.
export function renderField(field) {
  const wrap = document.createElement("div");
  wrap.className = "field";
  wrap.dataset.field = field.name;
  const id = `param-${field.name}`;
  const hintId = `${id}-hint`;
  const errorId = `error-${field.name}`;
  let control;
  if (field.kind === "boolean") {
    wrap.classList.add("check");
    control = document.createElement("input");
    control.type = "checkbox";
    control.checked = Boolean(field.default);
  } else if (field.kind === "enum") {
    control = document.createElement("select");
    for (const choice of field.choices) {
      const option = document.createElement("option");
      option.value = choice;
      option.textContent = choice;
      control.append(option);
    }
    if (field.default !== undefined && field.default !== null) control.value = field.default;
  } else if (field.kind === "integer" || field.kind === "number") {
    control = document.createElement("input");
    control.type = "number";
    control.inputMode = field.kind === "integer" ? "numeric" : "decimal";
    if (field.minimum !== undefined) control.min = field.minimum;
    if (field.maximum !== undefined) control.max = field.maximum;
    control.step = field.multipleOf || (field.kind === "integer" ? 1 : "any");
    if (field.default !== undefined && field.default !== null) control.value = field.default;
    if (field.nullable) control.placeholder = "auto";
  } else {
    control = document.createElement("input");
    control.type = "text";
    if (field.default) control.value = field.default;
  }
  control.id = id;
  control.name = field.name;
  control.dataset.kind = field.kind;
  control.setAttribute("aria-describedby", `${hintId} ${errorId}`);
  const labelEl = document.createElement("label");
  labelEl.htmlFor = id;
  labelEl.textContent = label(field.name);
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.id = hintId;
  hint.textContent = [field.description, rangeText(field)].filter(Boolean).join(" · ");
  const error = document.createElement("p");
  error.className = "field-error";
  error.id = errorId;
  error.setAttribute("role", "alert");
  if (field.kind === "boolean") wrap.append(control, labelEl, hint, error);
  else wrap.append(labelEl, control, hint, error);
  if (field.name === "seed") {
    const dice = document.createElement("button");
    dice.type = "button";
    dice.className = "quiet small seed-random";
    dice.textContent = "Use a random seed (-1)";
    dice.addEventListener("click", () => { control.value = -1; });
    control.after(dice);
  }
  return wrap;
}

// The value of a control as the API wants it (undefined: leave the field out, the server's default applies).
export function readControl(control) {
  const kind = control.dataset.kind;
  if (kind === "boolean") return control.checked;
  if (kind === "integer" || kind === "number") {
    if (control.value.trim() === "") return undefined;
    const value = Number(control.value);
    return Number.isFinite(value) ? value : control.value;
  }
  return control.value;
}

export function writeControl(control, value) {
  if (control.dataset.kind === "boolean") control.checked = Boolean(value);
  else control.value = value === null || value === undefined ? "" : value;
}
