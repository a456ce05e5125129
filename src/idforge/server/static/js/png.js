// PNG text chunks: write the recipe into a PNG (tEXt `idforge`, as the CLI's PNGs carry) and read it back from a
// dropped file (tEXt, zTXt or iTXt). The JPEG the server sends is decoded once and re-encoded losslessly as PNG.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
let crcTable = null;

function crc32(bytes) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const byte of bytes) crc = crcTable[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// tEXt is Latin-1: JSON keeps to ASCII by escaping everything else (as Python's json.dumps does by default).
export function asciiJson(value) {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

function latin1(text) {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    out[i] = code < 256 ? code : 63; // "?"
  }
  return out;
}

function textChunk(keyword, text) {
  const data = new Uint8Array([...latin1(keyword), 0, ...latin1(text)]);
  const chunk = new Uint8Array(12 + data.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, data.length);
  chunk.set(latin1("tEXt"), 4);
  chunk.set(data, 8);
  view.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
  return chunk;
}

function isPng(bytes) {
  return SIGNATURE.every((b, i) => bytes[i] === b);
}

function* chunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 8;
  while (offset + 12 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    yield { type, offset, length, data: bytes.subarray(offset + 8, offset + 8 + length) };
    offset += 12 + length;
  }
}

// A copy of `png` (bytes) with text chunks added right after IHDR, before the pixels, as PIL writes them (so
// readers that stop at the first IDAT, PIL's Image.open among them, see the recipe).
export function withText(png, entries) {
  const first = chunks(png).next().value;
  if (!isPng(png) || !first || first.type !== "IHDR") throw new Error("not a PNG");
  const at = first.offset + 12 + first.length;
  const extra = Object.entries(entries).map(([k, v]) => textChunk(k, v));
  const out = new Uint8Array(png.length + extra.reduce((n, c) => n + c.length, 0));
  out.set(png.subarray(0, at), 0);
  let offset = at;
  for (const c of extra) { out.set(c, offset); offset += c.length; }
  out.set(png.subarray(at), offset);
  return out;
}

async function inflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Every text chunk of a PNG as {keyword: text}; null when the bytes are not a PNG.
export async function readText(bytes) {
  if (!isPng(bytes)) return null;
  const found = {};
  const decoder = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  for (const chunk of chunks(bytes)) {
    const zero = chunk.data.indexOf(0);
    if (zero < 0) continue;
    const keyword = decoder.decode(chunk.data.subarray(0, zero));
    if (chunk.type === "tEXt") found[keyword] = decoder.decode(chunk.data.subarray(zero + 1));
    else if (chunk.type === "zTXt") found[keyword] = decoder.decode(await inflate(chunk.data.subarray(zero + 2)));
    else if (chunk.type === "iTXt") {
      const compressed = chunk.data[zero + 1] === 1;
      let at = zero + 3;
      at = chunk.data.indexOf(0, at) + 1; // language tag
      at = chunk.data.indexOf(0, at) + 1; // translated keyword
      const body = chunk.data.subarray(at);
      found[keyword] = utf8.decode(compressed ? await inflate(body) : body);
    }
  }
  return found;
}

// The image (a JPEG or PNG blob) as PNG bytes, decoded and re-encoded by the browser without loss.
export async function toPng(blob) {
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return new Uint8Array(await png.arrayBuffer());
}
