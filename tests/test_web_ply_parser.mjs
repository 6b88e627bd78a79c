// Unit tests of web/js/ply_parser.js under node's test runner (run by tests/test_web_node.py, or directly:
// node --test tests/test_web_ply_parser.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { inspectPly, parsePly, parsePlyHeader, PlyError, SH_C0 } from "../web/js/ply_parser.js";

function plyBytes(headerLines, body) {
  const header = new TextEncoder().encode(["ply", ...headerLines, "end_header", ""].join("\n"));
  const out = new Uint8Array(header.length + body.byteLength);
  out.set(header);
  out.set(new Uint8Array(body.buffer, body.byteOffset, body.byteLength), header.length);
  return out.buffer;
}

const SPLAT_PROPS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"];

function splatFile(rows, format = "binary_little_endian 1.0") {
  const lines = [`format ${format}`, `element vertex ${rows.length}`, ...SPLAT_PROPS.map((p) => `property float ${p}`)];
  const body = new Float32Array(rows.flat());
  return plyBytes(lines, body);
}

test("3DGS splat: kind, centre, DC colour, opacity", () => {
  const s = Math.log(0.5);
  const q = Math.SQRT1_2;
  const row = [1, 2, 3, 0, 0, 0, 1, 0, -1, 0, s, Math.log(1), Math.log(2), q, 0, 0, q];
  const r = parsePly(splatFile([row]));
  assert.equal(r.kind, "splats");
  assert.equal(r.count, 1);
  assert.deepEqual([...r.positions], [1, 2, 3]);
  assert.ok(Math.abs(r.colors[0] - (0.5 + SH_C0)) < 1e-6);
  assert.ok(Math.abs(r.colors[1] - 0.5) < 1e-6);
  assert.ok(Math.abs(r.colors[2] - (0.5 - SH_C0)) < 1e-6);
  assert.ok(Math.abs(r.opacities[0] - 0.5) < 1e-6);
  assert.deepEqual(inspectPly(splatFile([row])), { kind: "splats", count: 1, format: "binary_little_endian",
    shDegree: 0, compressed: false });
});

test("compressed splat PLY goes to the splat viewer", () => {
  const file = plyBytes(["format binary_little_endian 1.0", "element chunk 1", "property float min_x", "element vertex 1",
    "property uint packed_position"], new Uint8Array(8));
  assert.deepEqual(inspectPly(file), { kind: "splats", count: 1, format: "binary_little_endian", shDegree: 0,
    compressed: true });
  assert.throws(() => parsePly(file), /Compressed splat PLY/);
});

test("point cloud: uchar colours and confidence", () => {
  const lines = ["format binary_little_endian 1.0", "element vertex 2", "property float x", "property float y",
    "property float z", "property uchar red", "property uchar green", "property uchar blue", "property float confidence"];
  const buf = new ArrayBuffer(2 * 19);
  const dv = new DataView(buf);
  [[0, 1, 2, 255, 0, 128, 0.5], [3, 4, 5, 0, 255, 0, 1]].forEach((r, i) => {
    const o = i * 19;
    dv.setFloat32(o, r[0], true); dv.setFloat32(o + 4, r[1], true); dv.setFloat32(o + 8, r[2], true);
    dv.setUint8(o + 12, r[3]); dv.setUint8(o + 13, r[4]); dv.setUint8(o + 14, r[5]);
    dv.setFloat32(o + 15, r[6], true);
  });
  const r = parsePly(plyBytes(lines, new Uint8Array(buf)));
  assert.equal(r.kind, "points");
  assert.ok(r.hasConfidence);
  assert.deepEqual([...r.positions], [0, 1, 2, 3, 4, 5]);
  assert.ok(Math.abs(r.colors[2] - 128 / 255) < 1e-6);
  assert.equal(r.colors[4], 1);
  assert.deepEqual([...r.opacities], [1, 1]);
});

test("ascii and big-endian files", () => {
  const ascii = plyBytes(["format ascii 1.0", "element vertex 2", "property float x", "property float y", "property float z"],
    new TextEncoder().encode("1 2 3\n4 5 6\n"));
  assert.deepEqual([...parsePly(ascii).positions], [1, 2, 3, 4, 5, 6]);
  const be = new DataView(new ArrayBuffer(12));
  [7, 8, 9].forEach((v, i) => be.setFloat32(4 * i, v, false));
  const big = plyBytes(["format binary_big_endian 1.0", "element vertex 1", "property float x", "property float y",
    "property float z"], new Uint8Array(be.buffer));
  const r = parsePly(big);
  assert.deepEqual([...r.positions], [7, 8, 9]);
  assert.deepEqual([...r.colors], [0.5, 0.5, 0.5]);
});

test("skips fixed-size elements before vertex", () => {
  const body = new Uint8Array(4 + 12);
  new DataView(body.buffer).setFloat32(4 + 8, 5, true);
  const r = parsePly(plyBytes(["format binary_little_endian 1.0", "element camera 1", "property int id",
    "element vertex 1", "property float x", "property float y", "property float z"], body));
  assert.deepEqual([...r.positions], [0, 0, 5]);
});

test("clear errors for unreadable files", () => {
  const err = (buf, re) => {
    for (const fn of [parsePly, inspectPly]) assert.throws(() => fn(buf), (e) => e instanceof PlyError && re.test(e.message));
  };
  err(new TextEncoder().encode("<html>nope</html>").buffer, /Not a PLY file.*HTML/);
  err(new Uint8Array([0x1f, 0x8b, 8, 0, 0]).buffer, /gzip/);
  const full = splatFile([new Array(17).fill(0)]);
  err(full.slice(0, full.byteLength - 10), /Truncated PLY/);
  err(new TextEncoder().encode("ply\nformat binary_little_endian 1.0\nelement vertex 3\n").buffer, /Truncated PLY.*end_header/);
  err(plyBytes(["format binary_little_endian 1.0", "element face 0", "property list uchar int vertex_indices"],
    new Uint8Array(0)), /no 'vertex' element/);
  err(plyBytes(["format binary_little_endian 1.0", "element vertex 0", "property float x", "property float y",
    "property float z"], new Uint8Array(0)), /0 vertices/);
  err(plyBytes(["format binary_little_endian 1.0", "element vertex 1", "property float x"], new Uint8Array(4)), /no 'y'/);
  err(plyBytes(["format weird 1.0", "element vertex 1"], new Uint8Array(0)), /unknown format/);
  err(new TextEncoder().encode("ply\nformat binary_little_endian 1.0\nelement vertex 1000000000000\nproperty float x\n" +
    "property float y\nproperty float z\nend_header\n").buffer, /Truncated PLY/);
});

test("header parser reports the data offset", () => {
  const h = parsePlyHeader(plyBytes(["format ascii 1.0", "comment hi", "element vertex 1", "property double x"],
    new Uint8Array(0)));
  assert.equal(h.format, "ascii");
  assert.equal(h.elements[0].properties[0].size, 8);
  assert.equal(h.dataOffset, "ply\nformat ascii 1.0\ncomment hi\nelement vertex 1\nproperty double x\nend_header\n".length);
});
