// PLY checks for the VIST3A previewer: what a .ply holds (3DGS splats, compressed splats or a point cloud), with
// clear messages for files that cannot be shown, and the point-cloud reader (splats are decoded by Spark).
//
// Pure ES module, no DOM and no side effects, so it runs in the browser and under node (unit tests). ComfyUI
// imports every .js under web/ as an extension module; importing this one only defines functions.
//
// inspectPly(arrayBuffer) -> {kind: "splats" | "points", count, format, shDegree, compressed}
// parsePly(arrayBuffer) -> {kind, count, positions: Float32Array(3n), colors: Float32Array(3n) in [0,1],
//   opacities: Float32Array(n) in [0,1], format, shDegree, hasConfidence, nonFinite}
// Every problem throws PlyError with a message meant for the user (shown in the node).

export const SH_C0 = 0.28209479177387814;
export const MAX_HEADER_BYTES = 64 * 1024;

export class PlyError extends Error {
  constructor(message) {
    super(message);
    this.name = "PlyError";
  }
}

const TYPES = {
  char: ["Int8", 1], int8: ["Int8", 1],
  uchar: ["Uint8", 1], uint8: ["Uint8", 1],
  short: ["Int16", 2], int16: ["Int16", 2],
  ushort: ["Uint16", 2], uint16: ["Uint16", 2],
  int: ["Int32", 4], int32: ["Int32", 4],
  uint: ["Uint32", 4], uint32: ["Uint32", 4],
  float: ["Float32", 4], float32: ["Float32", 4],
  double: ["Float64", 8], float64: ["Float64", 8],
};

const COMPRESSED_MARKERS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"];
const SPLAT_PROPS = ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"];

/** Parse the header. Returns {format, elements: [{name, count, properties: [{name, type, size, list}]}], dataOffset}. */
export function parsePlyHeader(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (bytes.length < 4 || !(magic === "ply\n" || magic === "ply\r")) {
    let hint = "";
    if (bytes[0] === 0x1f && bytes[1] === 0x8b) hint = " (it is gzip-compressed: decompress it first)";
    else if (bytes[0] === 0x50 && bytes[1] === 0x4b) hint = " (it is a zip archive)";
    else if (bytes[0] === 0x3c) hint = " (it looks like HTML/XML, e.g. an error page)";
    throw new PlyError(`Not a PLY file: it does not start with 'ply'${hint}.`);
  }
  const limit = Math.min(bytes.length, MAX_HEADER_BYTES);
  const marker = "end_header";
  let end = -1;
  outer: for (let i = 0; i + marker.length <= limit; i++) {
    for (let j = 0; j < marker.length; j++) if (bytes[i + j] !== marker.charCodeAt(j)) continue outer;
    end = i + marker.length;
    break;
  }
  if (end < 0) {
    throw new PlyError(
      bytes.length < MAX_HEADER_BYTES
        ? "Truncated PLY: the header has no 'end_header' line."
        : `Bad PLY: no 'end_header' within the first ${MAX_HEADER_BYTES} bytes.`,
    );
  }
  if (bytes[end] === 0x0d) end++;
  if (bytes[end] !== 0x0a) throw new PlyError("Bad PLY: 'end_header' is not followed by a newline.");
  const dataOffset = end + 1;
  const text = new TextDecoder("latin1").decode(bytes.subarray(0, end));
  let format = null;
  const elements = [];
  for (const raw of text.split(/\r?\n/).slice(1)) {
    const t = raw.trim().split(/\s+/);
    if (!t[0] || t[0] === "comment" || t[0] === "obj_info") continue;
    if (t[0] === "format") {
      format = t[1];
      if (!["ascii", "binary_little_endian", "binary_big_endian"].includes(format)) {
        throw new PlyError(`Bad PLY: unknown format '${format}'.`);
      }
    } else if (t[0] === "element") {
      const count = Number(t[2]);
      if (!Number.isInteger(count) || count < 0) throw new PlyError(`Bad PLY: element '${t[1]}' has count '${t[2]}'.`);
      elements.push({ name: t[1], count, properties: [] });
    } else if (t[0] === "property") {
      const el = elements[elements.length - 1];
      if (!el) throw new PlyError("Bad PLY: a property comes before any element.");
      if (t[1] === "list") {
        el.properties.push({ name: t[4], type: t[3], countType: t[2], list: true, size: 0 });
      } else {
        const ty = TYPES[t[1]];
        if (!ty) throw new PlyError(`Bad PLY: property '${t[2]}' has unknown type '${t[1]}'.`);
        el.properties.push({ name: t[2], type: t[1], list: false, size: ty[1] });
      }
    } else if (t[0] !== "end_header") {
      throw new PlyError(`Bad PLY header line: '${raw.trim().slice(0, 80)}'.`);
    }
  }
  if (!format) throw new PlyError("Bad PLY: the header has no 'format' line.");
  return { format, elements, dataOffset };
}

function sigmoid(x) {
  return 1 / (1 + Math.exp(-x));
}

function clamp01(x) {
  return x < 0 ? 0 : x > 1 ? 1 : x;
}

/** Read the vertex element into one Float64-free column per property (Float32Array each). */
function readVertexColumns(buffer, header, vertex, wanted) {
  const n = vertex.count;
  const cols = {};
  const allocate = () => { for (const name of wanted) cols[name] = new Float32Array(n); };
  if (header.format === "ascii") {
    // every ascii value takes at least 2 bytes (a digit and a separator)
    if (n * vertex.properties.length * 2 > buffer.byteLength - header.dataOffset) {
      throw new PlyError(`Truncated PLY: the header announces ${n} ascii vertices but the file is too short for them.`);
    }
    allocate();
    const text = new TextDecoder("latin1").decode(new Uint8Array(buffer, header.dataOffset));
    const lines = text.split(/\r?\n/);
    let line = 0;
    for (const el of header.elements) {
      if (el === vertex) break;
      line += el.count;
    }
    const idx = vertex.properties.map((p) => (p.name in cols ? cols[p.name] : null));
    for (let i = 0; i < n; i++) {
      const s = lines[line + i];
      const t = s === undefined ? [] : s.trim().split(/\s+/);
      if (t.length < vertex.properties.length || t[0] === "") {
        throw new PlyError(`Truncated PLY: ascii vertex ${i} of ${n} is missing or incomplete.`);
      }
      for (let k = 0; k < idx.length; k++) if (idx[k]) idx[k][i] = Number(t[k]);
    }
    return cols;
  }
  const little = header.format === "binary_little_endian";
  const { offset, stride } = vertexLayout(buffer, header, vertex);
  allocate();
  const view = new DataView(buffer);
  let rel = 0;
  for (const p of vertex.properties) {
    const col = cols[p.name];
    if (col) {
      const getter = DataView.prototype["get" + TYPES[p.type][0]];
      let o = offset + rel;
      if (p.type.startsWith("float") && p.size === 4 && little) {
        for (let i = 0; i < n; i++, o += stride) col[i] = view.getFloat32(o, true);
      } else {
        for (let i = 0; i < n; i++, o += stride) col[i] = getter.call(view, o, little);
      }
    }
    rel += p.size;
  }
  return cols;
}

function colorScale(prop, col) {
  if (prop.type === "uchar" || prop.type === "uint8") return 1 / 255;
  if (prop.type === "ushort" || prop.type === "uint16") return 1 / 65535;
  for (let i = 0; i < col.length; i++) if (col[i] > 1) return 1 / 255;
  return 1;
}

function toArrayBuffer(buffer) {
  return buffer instanceof ArrayBuffer ? buffer : buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
}

/** Offset of the vertex data and the vertex record size, checking the file is long enough (binary files). */
function vertexLayout(buffer, header, vertex) {
  let offset = header.dataOffset;
  for (const el of header.elements) {
    if (el === vertex) break;
    if (el.properties.some((p) => p.list)) {
      throw new PlyError(`Unsupported PLY: element '${el.name}' before 'vertex' has list properties.`);
    }
    offset += el.count * el.properties.reduce((a, p) => a + p.size, 0);
  }
  if (vertex.properties.some((p) => p.list)) throw new PlyError("Unsupported PLY: the vertex element has list properties.");
  const stride = vertex.properties.reduce((a, p) => a + p.size, 0);
  const need = offset + vertex.count * stride;
  if (need > buffer.byteLength) {
    throw new PlyError(
      `Truncated PLY: the header announces ${vertex.count} vertices (${need} bytes in all) but the file has ${buffer.byteLength} bytes.`,
    );
  }
  return { offset, stride };
}

/** What a PLY holds; throws PlyError for files no viewer can show (not a PLY, truncated, no vertices, ...). */
export function inspectPly(buffer) {
  buffer = toArrayBuffer(buffer);
  const header = parsePlyHeader(buffer);
  const vertex = header.elements.find((e) => e.name === "vertex");
  const names = new Set(vertex ? vertex.properties.map((p) => p.name) : []);
  const compressed = header.elements.some((e) => e.name === "chunk") || COMPRESSED_MARKERS.some((m) => names.has(m));
  if (!vertex) throw new PlyError("Bad PLY: no 'vertex' element, so it holds no points or splats.");
  if (!compressed) {
    for (const c of ["x", "y", "z"]) if (!names.has(c)) throw new PlyError(`Bad PLY: the vertex element has no '${c}' property.`);
  }
  if (vertex.count === 0) throw new PlyError("Empty PLY: the file holds 0 vertices.");
  if (header.format !== "ascii") vertexLayout(buffer, header, vertex);
  const isSplat = compressed || SPLAT_PROPS.every((p) => names.has(p));
  const nRest = [...names].filter((p) => p.startsWith("f_rest_")).length;
  return {
    kind: isSplat ? "splats" : "points",
    count: vertex.count,
    format: header.format,
    shDegree: isSplat && !compressed ? Math.round(Math.sqrt(nRest / 3 + 1)) - 1 : 0,
    compressed,
  };
}

/** Positions and colours of a PLY's vertices (point clouds; also the centres and DC colours of splat PLYs). */
export function parsePly(buffer) {
  buffer = toArrayBuffer(buffer);
  const info = inspectPly(buffer);
  if (info.compressed) throw new PlyError("Compressed splat PLY: decode it with the splat viewer, not as points.");
  const header = parsePlyHeader(buffer);
  const vertex = header.elements.find((e) => e.name === "vertex");
  const names = new Set(vertex.properties.map((p) => p.name));
  const n = vertex.count;
  const isSplat = info.kind === "splats";
  const hasDc = ["f_dc_0", "f_dc_1", "f_dc_2"].every((p) => names.has(p));
  const rgbNames = names.has("red") ? ["red", "green", "blue"] : names.has("r") ? ["r", "g", "b"] : null;
  const hasRgb = rgbNames && rgbNames.every((p) => names.has(p));
  const wanted = ["x", "y", "z"];
  if (isSplat && names.has("opacity")) wanted.push("opacity");
  if (hasDc) wanted.push("f_dc_0", "f_dc_1", "f_dc_2");
  else if (hasRgb) wanted.push(...rgbNames);
  if (!isSplat && names.has("confidence")) wanted.push("confidence");
  const cols = readVertexColumns(buffer, header, vertex, wanted);

  const positions = new Float32Array(3 * n);
  const colors = new Float32Array(3 * n);
  const opacities = new Float32Array(n);
  const { x, y, z } = cols;
  let bad = 0;
  for (let i = 0; i < n; i++) {
    positions[3 * i] = x[i];
    positions[3 * i + 1] = y[i];
    positions[3 * i + 2] = z[i];
    if (!(Number.isFinite(x[i]) && Number.isFinite(y[i]) && Number.isFinite(z[i]))) bad++;
  }
  if (bad === n) throw new PlyError("Bad PLY: every position is NaN or infinite.");
  if (hasDc) {
    const d = [cols.f_dc_0, cols.f_dc_1, cols.f_dc_2];
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) colors[3 * i + c] = clamp01(0.5 + SH_C0 * d[c][i]);
  } else if (hasRgb) {
    const props = rgbNames.map((nm) => vertex.properties.find((p) => p.name === nm));
    const d = rgbNames.map((nm) => cols[nm]);
    const s = props.map((p, c) => colorScale(p, d[c]));
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) colors[3 * i + c] = clamp01(d[c][i] * s[c]);
  } else {
    colors.fill(0.5);
  }
  if (cols.opacity) for (let i = 0; i < n; i++) opacities[i] = sigmoid(cols.opacity[i]);
  else opacities.fill(1);
  return {
    kind: info.kind,
    count: n,
    positions,
    colors,
    opacities,
    format: header.format,
    shDegree: info.shDegree,
    hasConfidence: !isSplat && names.has("confidence"),
    nonFinite: bad,
  };
}
