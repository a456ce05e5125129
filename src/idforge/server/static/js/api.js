// The HTTP side of the studio: the key (kept in localStorage), credits from x-remaining-credits, and errors
// turned into one sentence a person can act on (401, 406, 503 and 400 with the field it names).

const KEY_STORAGE = "idforge.apiKey";

export class ApiError extends Error {
  constructor(status, message, field = null, extra = {}) {
    super(message);
    this.status = status;
    this.field = field;
    this.extra = extra;
  }
}

export function explain(status, body, headers) {
  const said = (body && (body.error || body.detail)) || "";
  if (status === 401) return "The API key was refused (missing, unknown or revoked). Enter a valid key at the top.";
  if (status === 406) {
    const left = headers && headers.get("x-remaining-credits");
    const reason = said.replace(/^not enough credits:?\s*/i, "") || "this request costs more than the key has";
    return `Not enough credits: ${reason}` +
      (left !== null && left !== undefined ? ` (the key has ${left} left).` : ".");
  }
  if (status === 503) {
    const retry = headers && headers.get("retry-after");
    return `The server is busy: ${said || "the queue is full"}.` + (retry ? ` Try again in ${retry} s.` : "");
  }
  if (status === 413) return `The request is too large: ${said}. Use smaller images.`;
  if (status === 404) return `Not found: ${said}`;
  if (status >= 500) {
    const id = body && body.request_id ? ` (request id ${body.request_id})` : "";
    return `The server failed${id}: ${said || "internal error"}.`;
  }
  return said || `HTTP ${status}`;
}

export class Api {
  constructor(onCredits) {
    this.onCredits = onCredits;
    this.key = localStorage.getItem(KEY_STORAGE) || "";
  }

  setKey(key) {
    this.key = key.trim();
    if (this.key) localStorage.setItem(KEY_STORAGE, this.key);
    else localStorage.removeItem(KEY_STORAGE);
  }

  async request(method, url, body = undefined) {
    const headers = { accept: "application/json" };
    if (this.key) headers["x-api-key"] = this.key;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, `Cannot reach the server (${err.message}). Is idforge serve running?`);
    }
    const credits = response.headers.get("x-remaining-credits");
    if (credits !== null && this.onCredits) this.onCredits(Number(credits));
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) {
      try { data = await response.json(); } catch { data = null; }
    }
    if (!response.ok) {
      throw new ApiError(response.status, explain(response.status, data, response.headers), data && data.field, data || {});
    }
    return data;
  }

  get(url) { return this.request("GET", url); }
  post(url, body) { return this.request("POST", url, body === undefined ? {} : body); }
}
