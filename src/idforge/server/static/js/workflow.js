// ComfyUI workflows dropped on the page: a workflow .json (UI or API format) or a ComfyUI PNG (its "prompt" text
// chunk, the API graph, first; else "workflow", the UI graph: the order the server reads a PNG in).

// A UI-format graph has a `nodes` list; an API-format one is {id: {class_type, inputs}}.
export function isWorkflow(value) {
  if (!value || typeof value !== "object" || Array.isArray(value)) return false;
  if (Array.isArray(value.nodes)) return true;
  return Object.values(value).some((node) => node && typeof node === "object" && "class_type" in node);
}

function parsed(text) {
  try { return JSON.parse(text); } catch { return null; }
}

// The workflow in a JSON file's bytes, or null when they are no workflow.
export function workflowFromJson(bytes) {
  const value = parsed(new TextDecoder("utf-8").decode(bytes));
  return isWorkflow(value) ? value : null;
}

// The workflow in a PNG's text chunks ({keyword: text}), or null.
export function workflowFromPng(texts) {
  for (const keyword of ["prompt", "workflow"]) {
    const value = texts[keyword] ? parsed(texts[keyword]) : null;
    if (isWorkflow(value)) return value;
  }
  return null;
}

// The gallery entries of a completed workflow job: one per image of each output node (a node's images are
// `output.nodes[node]`), each with the recipe of the generation that made it (as the CLI's PNG of it carries).
export function workflowImages(result) {
  const section = (result.recipe && result.recipe.workflow) || {};
  const generations = section.generations || [];
  const recipes = (result.recipe && result.recipe.generations) || [];
  const seeds = result.seeds || [result.seed];
  const entries = [];
  for (const [node, images] of Object.entries(result.output.nodes || {})) {
    const at = generations.findIndex((g) => (g.outputs || []).includes(node));
    const indices = (section.outputs || {})[node] || [];
    images.forEach((image, i) => {
      const recipe = JSON.parse(JSON.stringify(recipes[at] || {}));
      recipe.seed = seeds[indices[i]] ?? recipe.seed;
      entries.push({ node, image, index: indices[i] ?? i, recipe });
    });
  }
  return entries;
}
