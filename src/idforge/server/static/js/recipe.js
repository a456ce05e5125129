// Recipes: what goes into a downloaded PNG and how a dropped PNG's recipe becomes form values again.
//
// A studio PNG carries the server's recipe for that image (as the CLI writes it: method, seed, params with the
// engine's names, models, timings), plus `request`: the exact API body that made it, images left out. Restoring
// prefers `request`; a CLI PNG has only `params`, whose engine names are mapped to the API's.

const ENGINE_TO_API = { steps: "num_inference_steps", guidance: "guidance_scale", attn_mask: "mask_image" };

function copy(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

// The recipe of image `index` of a result alone: its own seed, one image (as engine/result.py image_recipe).
// `methods`: slug -> the server's x-idforge-method (title, previews, recipe_methods).
export function imageRecipe({ slug, request, result, index, version, methods }) {
  const seeds = result.seeds || [result.seed];
  const seed = seeds[index];
  const recipe = copy(result.recipe) && Object.keys(result.recipe).length ? copy(result.recipe) : fallbackRecipe(slug, request, result, version, methods);
  recipe.seed = seed;
  recipe.batch_seed = seeds[0];
  recipe.batch_index = index;
  recipe.params = recipe.params || {};
  recipe.params.seed = seed;
  recipe.params.num_images = 1;
  const body = copy(request);
  if (body.batch) body.seed = seeds[0]; // FaceID batch: output i = reference i at seed + i; the batch is the unit
  else {
    body.seed = seed;
    if ("num_images" in body) body.num_images = 1;
  }
  recipe.request = { endpoint: `/v2/${slug}`, method: slug, body, request_id: result.request_id };
  const identity = result.identity || (result.recipe && result.recipe.identity); // the shared `identity` object
  if (identity && identity.images) {
    recipe.identity = { ...copy(identity), images: [copy(identity.images[index])] };
  }
  if (!recipe.timings && result.metrics) recipe.timings = copy(result.metrics);
  return recipe;
}

// Only when the server sent no recipe: the request in the engine's vocabulary, so the PNG is still complete.
function fallbackRecipe(slug, request, result, version, methods) {
  const params = {};
  const reverse = Object.fromEntries(Object.entries(ENGINE_TO_API).map(([k, v]) => [v, k]));
  for (const [name, value] of Object.entries(request)) params[reverse[name] || name] = value;
  return {
    method: recipeMethods(methods, slug)[0] || slug, // the name the CLI's recipes give the method
    idforge_version: version,
    width: request.width ?? null,
    height: request.height ?? null,
    params,
    timings: copy(result.metrics) || {},
    source: "idforge studio (the server sent no recipe)",
  };
}

// The A1111-style line the CLI also writes (`parameters`), which many image viewers show.
export function summaryLine(recipe) {
  const p = recipe.params || {};
  return [
    p.prompt || "",
    `Negative prompt: ${p.negative_prompt || ""}`,
    `Steps: ${p.steps ?? p.num_inference_steps}, Sampler: ${p.scheduler ?? "euler"}, CFG scale: ${p.guidance ?? p.guidance_scale}, ` +
      `Seed: ${recipe.seed}, Size: ${recipe.width}x${recipe.height}, Method: ${recipe.method}, idforge: ${recipe.idforge_version}`,
  ].join("\n");
}

// FaceID's adapter name from a CLI recipe's checkpoint file ("ip-adapter-faceid-plusv2_sdxl.bin" -> "faceid-plusv2-sdxl").
function adapterFromRecipe(recipe) {
  const source = recipe.models && recipe.models.ip_adapter && recipe.models.ip_adapter.source;
  if (!source) return undefined;
  const file = String(source).split(/[\\/]/).pop().replace(/\.(bin|safetensors|pt|pth)$/, "");
  return file.replace(/^ip-adapter-/, "").replace(/_/g, "-");
}

function recipeMethods(methods, slug) {
  return (methods && methods[slug] && methods[slug].recipe_methods) || [];
}

// The method (slug) whose recipes are named `name` (a recipe's `method`), from the server's registry.
function slugOfRecipe(methods, name) {
  return Object.keys(methods || {}).find((slug) => recipeMethods(methods, slug).includes(name) || slug === name);
}

// {slug, values, ignored, notes} for a recipe: the method's tab and the API field values to put in the form.
export function recipeToForm(recipe, fieldsForSlug, methods) {
  const notes = [];
  let slug = recipe.request && recipe.request.method;
  let source = recipe.request && recipe.request.body;
  if (!slug || !source) {
    slug = slugOfRecipe(methods, recipe.method);
    source = {};
    for (const [name, value] of Object.entries(recipe.params || {})) source[ENGINE_TO_API[name] || name] = value;
    const adapter = adapterFromRecipe(recipe);
    if (adapter) source.adapter = adapter;
    if (recipe.width && source.width == null) source.width = recipe.width;
    if (recipe.height && source.height == null) source.height = recipe.height;
    if (recipe.seed !== undefined) source.seed = recipe.seed;
    const [own] = recipeMethods(methods, slug);
    if (slug && own && recipe.method !== own) notes.push(`made as ${recipe.method} (CLI only): the ${methods[slug].title} part is restored.`);
  }
  if (!slug) throw new Error(`unknown method ${JSON.stringify(recipe.method)} in this recipe`);
  const fields = fieldsForSlug(slug);
  const values = {};
  const ignored = [];
  for (const [name, value] of Object.entries(source)) {
    if (name === "images") continue; // the names of the input images: not restorable from a PNG
    if (name === "studio_style") { values.studio_style = value; continue; }
    const field = fields[name];
    if (!field || value === undefined) { ignored.push(name); continue; }
    if (field.choices && !field.choices.includes(value)) { ignored.push(name); continue; }
    values[name] = value;
  }
  return { slug, values, ignored, notes };
}
