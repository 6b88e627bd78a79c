// WebGL2 Gaussian-splat renderer for the VIST3A previewer (no dependencies, no network).
//
// Design
// * Per-splat data lives in one RGBA32F texture, 4 texels per splat:
//     t0 = (x, y, z, opacity)  t1 = (cov_xx, cov_xy, cov_xz, cov_yy)  t2 = (cov_yz, cov_zz, -, -)  t3 = (r, g, b, -)
//   The 3D covariance R S S^T R^T is computed once on load (ply_parser.js).
// * One instanced quad per splat. The only per-instance attribute is the splat index (uint), in back-to-front order.
//   The vertex shader fetches the splat with texelFetch, projects the 3D covariance to 2D with the Jacobian of the
//   perspective projection (EWA splatting, as 3DGS: Sigma' = J W Sigma W^T J^T + 0.3 I), takes its eigenvectors and
//   stretches the quad to 3 sigma along them. The fragment shader evaluates exp(-d^2/2) * opacity.
// * Blending: premultiplied "over", back to front (ONE, ONE_MINUS_SRC_ALPHA), no depth test.
// * Sorting: counting sort on 16-bit view depth (depth_sort.js) in a module worker; the order depends only on the
//   view direction, so it is recomputed only when the camera rotates (not on zoom / pan / resize). While a sort runs
//   the previous order is drawn. Without workers it sorts on the main thread.
// * Point clouds are drawn as small isotropic Gaussians (opacity 1) sized from the scene extent and point count.
// * Camera: orbit camera in the OpenCV convention of the pack (x right, y down, z forward); the initial view looks
//   along +z at the scene centre, i.e. roughly from the first input camera.
import { depthSortIndices } from "./depth_sort.js";

const TEX_WIDTH = 2048; // texels per row (WebGL2 guarantees MAX_TEXTURE_SIZE >= 2048); 512 splats per row

const VERT = `#version 300 es
precision highp float;
precision highp int;
precision highp usampler2D;
uniform highp sampler2D u_data;
uniform mat4 u_view;
uniform mat4 u_proj;
uniform vec2 u_focal;
uniform vec2 u_viewport;
uniform float u_splatScale;
in vec2 a_corner;
in uint a_index;
out vec4 v_color;
out vec2 v_pos;

ivec2 texel(uint i, uint k) {
  uint t = i * 4u + k;
  return ivec2(int(t % ${TEX_WIDTH}u), int(t / ${TEX_WIDTH}u));
}

void main() {
  vec4 t0 = texelFetch(u_data, texel(a_index, 0u), 0);
  vec4 t1 = texelFetch(u_data, texel(a_index, 1u), 0);
  vec4 t2 = texelFetch(u_data, texel(a_index, 2u), 0);
  vec4 t3 = texelFetch(u_data, texel(a_index, 3u), 0);
  vec4 cam = u_view * vec4(t0.xyz, 1.0);
  vec4 clip = u_proj * cam;
  float bound = 1.2 * clip.w;
  if (clip.w <= 0.0 || clip.z < -clip.w || abs(clip.x) > bound || abs(clip.y) > bound) {
    gl_Position = vec4(0.0, 0.0, 2.0, 1.0);
    return;
  }
  mat3 sigma = mat3(t1.x, t1.y, t1.z,
                    t1.y, t1.w, t2.x,
                    t1.z, t2.x, t2.y) * (u_splatScale * u_splatScale);
  float tz = -cam.z;
  // Jacobian of pixel coordinates (x right, y up) with respect to camera coordinates (GL: looking down -z)
  mat3 J = mat3(u_focal.x / tz, 0.0, 0.0,
                0.0, u_focal.y / tz, 0.0,
                u_focal.x * cam.x / (tz * tz), u_focal.y * cam.y / (tz * tz), 0.0);
  mat3 W = mat3(u_view);
  mat3 T = J * W;
  mat3 cov2d = T * sigma * transpose(T);
  float a = cov2d[0][0] + 0.3;
  float b = cov2d[0][1];
  float c = cov2d[1][1] + 0.3;
  float mid = 0.5 * (a + c);
  float radius = length(vec2(0.5 * (a - c), b));
  float l1 = mid + radius;
  float l2 = mid - radius;
  if (l2 <= 0.0) {
    gl_Position = vec4(0.0, 0.0, 2.0, 1.0);
    return;
  }
  vec2 major = abs(b) > 1e-12 ? normalize(vec2(b, l1 - a)) : (a >= c ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 minor = vec2(-major.y, major.x);
  vec2 axis1 = min(3.0 * sqrt(l1), 2048.0) * major;
  vec2 axis2 = min(3.0 * sqrt(l2), 2048.0) * minor;
  vec2 ndc = clip.xy / clip.w;
  vec2 offset = (a_corner.x * axis1 + a_corner.y * axis2) * 2.0 / u_viewport;
  gl_Position = vec4(ndc + offset, 0.0, 1.0);
  v_color = vec4(t3.rgb, t0.w);
  v_pos = 3.0 * a_corner;
}
`;

const FRAG = `#version 300 es
precision highp float;
in vec4 v_color;
in vec2 v_pos;
out vec4 fragColor;
void main() {
  float power = -0.5 * dot(v_pos, v_pos);
  if (power < -4.5) discard;
  float alpha = min(0.99, v_color.a * exp(power));
  if (alpha < 1.0 / 255.0) discard;
  fragColor = vec4(v_color.rgb * alpha, alpha);
}
`;

function compile(gl, type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error("Shader compile error: " + gl.getShaderInfoLog(s));
  return s;
}

function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function norm(a) { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

/** Robust centre and size of a point set: per-axis 2nd..98th percentile of a sample. */
export function sceneBounds(positions) {
  const n = positions.length / 3;
  const step = Math.max(1, Math.floor(n / 20000));
  const axes = [[], [], []];
  for (let i = 0; i < n; i += step) {
    const x = positions[3 * i], y = positions[3 * i + 1], z = positions[3 * i + 2];
    if (Number.isFinite(x) && Number.isFinite(y) && Number.isFinite(z)) { axes[0].push(x); axes[1].push(y); axes[2].push(z); }
  }
  if (!axes[0].length) return { center: [0, 0, 0], radius: 1 };
  const lo = [], hi = [];
  for (let k = 0; k < 3; k++) {
    const a = axes[k].sort((p, q) => p - q);
    const m = a.length;
    lo.push(a[Math.floor(0.02 * (m - 1))]);
    hi.push(a[Math.ceil(0.98 * (m - 1))]);
  }
  const center = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2];
  const radius = Math.max(1e-6, 0.5 * Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]));
  return { center, radius };
}

export class SplatRenderer {
  /**
   * canvas: an HTMLCanvasElement. options: {workerUrl (URL of sort_worker.js or null for main-thread sorting),
   * background: [r,g,b] in 0..1, fovY: degrees, preserveDrawingBuffer}.
   */
  constructor(canvas, options = {}) {
    this.canvas = canvas;
    this.options = options;
    const gl = canvas.getContext("webgl2", {
      antialias: false, premultipliedAlpha: true, alpha: false,
      preserveDrawingBuffer: !!options.preserveDrawingBuffer,
    });
    if (!gl) throw new Error("WebGL2 is not available in this browser, so the splat preview cannot be shown.");
    this.gl = gl;
    this.background = options.background || [0.11, 0.11, 0.12];
    this.fovY = ((options.fovY || 50) * Math.PI) / 180;
    this.count = 0;
    this.splatScale = 1;
    this.yaw = 0; this.pitch = 0; this.distance = 3; this.target = [0, 0, 0];
    this.sceneRadius = 1;
    this.dirty = true;
    this.sortedForward = null;
    this.sortPending = false;
    this.sortId = 0;
    this.lastSortMs = 0;
    this._frame = 0;
    this._disposed = false;
    this._initGL();
    this._initWorker(options.workerUrl);
    this._attachControls();
    this._loop = this._loop.bind(this);
    this._frame = requestAnimationFrame(this._loop);
  }

  _initGL() {
    const gl = this.gl;
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VERT));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FRAG));
    gl.bindAttribLocation(prog, 0, "a_corner");
    gl.bindAttribLocation(prog, 1, "a_index");
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error("Shader link error: " + gl.getProgramInfoLog(prog));
    this.program = prog;
    this.uniforms = {};
    for (const u of ["u_data", "u_view", "u_proj", "u_focal", "u_viewport", "u_splatScale"]) this.uniforms[u] = gl.getUniformLocation(prog, u);
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, 1, 1, -1, 1]), gl.STATIC_DRAW);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    this.indexBuffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.indexBuffer);
    gl.enableVertexAttribArray(1);
    gl.vertexAttribIPointer(1, 1, gl.UNSIGNED_INT, 0, 0);
    gl.vertexAttribDivisor(1, 1);
    const elements = gl.createBuffer();
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, elements);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, new Uint16Array([0, 1, 2, 0, 2, 3]), gl.STATIC_DRAW);
    gl.bindVertexArray(null);
    this.texture = gl.createTexture();
  }

  _initWorker(url) {
    this.worker = null;
    if (!url || typeof Worker === "undefined") return;
    try {
      this.worker = new Worker(url, { type: "module" });
      this.worker.onmessage = (e) => this._onSorted(e.data);
      this.worker.onerror = () => { this.worker = null; this.sortPending = false; this.dirty = true; };
    } catch (err) {
      this.worker = null;
    }
  }

  /** Show a parsed PLY (ply_parser.js parsePly result). Resets the camera to frame the scene. */
  setScene(scene) {
    const gl = this.gl;
    const n = scene.count;
    const rows = Math.ceil((n * 4) / TEX_WIDTH);
    const data = new Float32Array(rows * TEX_WIDTH * 4);
    const { positions: p, colors: c, opacities: o, covariances: cov } = scene;
    const bounds = sceneBounds(p);
    let pointVar = 0;
    if (!cov) {
      // isotropic Gaussians about the mean point spacing of a surface with this extent
      const s = Math.max((2 * bounds.radius) / Math.sqrt(n), bounds.radius * 1e-4) * 0.5;
      pointVar = s * s;
    }
    for (let i = 0; i < n; i++) {
      const b = 16 * i;
      data[b] = p[3 * i]; data[b + 1] = p[3 * i + 1]; data[b + 2] = p[3 * i + 2]; data[b + 3] = o[i];
      if (cov) {
        const k = 6 * i;
        data[b + 4] = cov[k]; data[b + 5] = cov[k + 1]; data[b + 6] = cov[k + 2]; data[b + 7] = cov[k + 3];
        data[b + 8] = cov[k + 4]; data[b + 9] = cov[k + 5];
      } else {
        data[b + 4] = pointVar; data[b + 7] = pointVar; data[b + 9] = pointVar;
      }
      data[b + 12] = c[3 * i]; data[b + 13] = c[3 * i + 1]; data[b + 14] = c[3 * i + 2];
    }
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, TEX_WIDTH, rows, 0, gl.RGBA, gl.FLOAT, data);
    this.positions = p;
    this.count = n;
    this.sceneRadius = bounds.radius;
    this.sceneCenter = bounds.center;
    this.resetView();
    // draw in file order until the first sort arrives
    gl.bindBuffer(gl.ARRAY_BUFFER, this.indexBuffer);
    const identity = new Uint32Array(n);
    for (let i = 0; i < n; i++) identity[i] = i;
    gl.bufferData(gl.ARRAY_BUFFER, identity, gl.DYNAMIC_DRAW);
    this.sortedForward = null;
    this.sortPending = false;
    this.sortId++;
    if (this.worker) this.worker.postMessage({ type: "init", positions: new Float32Array(p) });
    this.dirty = true;
  }

  resetView() {
    this.target = (this.sceneCenter || [0, 0, 0]).slice();
    this.yaw = 0;
    this.pitch = 0;
    this.distance = (this.sceneRadius / Math.sin(this.fovY / 2)) * 1.05;
    this.dirty = true;
  }

  /** Camera frame in world space: {eye, right, down, forward} (OpenCV axes). */
  cameraFrame() {
    const cp = Math.cos(this.pitch);
    const forward = norm([Math.sin(this.yaw) * cp, -Math.sin(this.pitch), Math.cos(this.yaw) * cp]);
    const right = norm(cross([0, 1, 0], forward));
    const down = cross(forward, right);
    const eye = sub(this.target, forward.map((v) => v * this.distance));
    return { eye, right, down, forward };
  }

  _matrices(width, height) {
    const { eye, right, down, forward } = this.cameraFrame();
    // GL view: rows right, up (= -down), back (= -forward); column-major storage
    const up = down.map((v) => -v), back = forward.map((v) => -v);
    const view = new Float32Array([
      right[0], up[0], back[0], 0,
      right[1], up[1], back[1], 0,
      right[2], up[2], back[2], 0,
      -dot(right, eye), -dot(up, eye), -dot(back, eye), 1,
    ]);
    const near = Math.max(this.distance * 0.01, this.sceneRadius * 1e-4);
    const far = this.distance + this.sceneRadius * 100;
    const f = 1 / Math.tan(this.fovY / 2);
    const aspect = width / height;
    const proj = new Float32Array([
      f / aspect, 0, 0, 0,
      0, f, 0, 0,
      0, 0, (far + near) / (near - far), -1,
      0, 0, (2 * far * near) / (near - far), 0,
    ]);
    const focalY = height / (2 * Math.tan(this.fovY / 2));
    return { view, proj, focal: [focalY, focalY], forward };
  }

  _requestSort(forward) {
    if (!this.count) return;
    const s = this.sortedForward;
    if (s && dot(s, forward) > 0.99999) return; // order unchanged: depth = forward . p + const
    if (this.sortPending) { this.dirty = true; return; } // ask again when the running sort finishes
    this.sortPending = true;
    const id = ++this.sortId;
    const fwd = forward.slice();
    if (this.worker) {
      this.worker.postMessage({ type: "sort", forward: fwd, id });
      this._pendingForward = fwd;
    } else {
      const t0 = performance.now();
      this._scratch = this._scratch || {};
      const indices = depthSortIndices(this.positions, fwd, null, this._scratch);
      this._pendingForward = fwd;
      this._onSorted({ type: "sorted", id, indices, ms: performance.now() - t0 });
    }
  }

  _onSorted(msg) {
    if (msg.type !== "sorted" || this._disposed) return;
    this.sortPending = false;
    if (msg.id !== this.sortId || msg.indices.length !== this.count) { this.dirty = true; return; }
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.indexBuffer);
    gl.bufferData(gl.ARRAY_BUFFER, msg.indices, gl.DYNAMIC_DRAW);
    this.sortedForward = this._pendingForward;
    this.lastSortMs = msg.ms;
    this.sortCount = (this.sortCount || 0) + 1;
    this.dirty = true;
    if (this.onSorted) this.onSorted(msg);
  }

  _resize() {
    const dpr = Math.min(window.devicePixelRatio || 1, 2);
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.dirty = true;
    }
  }

  _loop() {
    if (this._disposed) return;
    this._frame = requestAnimationFrame(this._loop);
    if (this.canvas.clientWidth > 0) this._resize();
    if (this.dirty) this.render();
  }

  /** Draw one frame now (also requests a re-sort when the view direction changed). */
  render() {
    this.dirty = false;
    const gl = this.gl;
    const w = this.canvas.width, h = this.canvas.height;
    gl.viewport(0, 0, w, h);
    gl.clearColor(this.background[0], this.background[1], this.background[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (!this.count) return;
    const { view, proj, focal, forward } = this._matrices(w, h);
    this._requestSort(forward);
    gl.useProgram(this.program);
    gl.disable(gl.DEPTH_TEST);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.uniform1i(this.uniforms.u_data, 0);
    gl.uniformMatrix4fv(this.uniforms.u_view, false, view);
    gl.uniformMatrix4fv(this.uniforms.u_proj, false, proj);
    gl.uniform2f(this.uniforms.u_focal, focal[0], focal[1]);
    gl.uniform2f(this.uniforms.u_viewport, w, h);
    gl.uniform1f(this.uniforms.u_splatScale, this.splatScale);
    gl.bindVertexArray(this.vao);
    gl.drawElementsInstanced(gl.TRIANGLES, 6, gl.UNSIGNED_SHORT, 0, this.count);
    gl.bindVertexArray(null);
    this.frames = (this.frames || 0) + 1;
  }

  // ------------------------------------------------------------------------------------------- mouse controls
  // left drag: orbit; right / middle drag or shift+left: pan; wheel: zoom; double click: reset view.
  _attachControls() {
    const el = this.canvas;
    let drag = null;
    const onDown = (e) => {
      e.preventDefault();
      e.stopPropagation();
      drag = { x: e.clientX, y: e.clientY, pan: e.button === 1 || e.button === 2 || e.shiftKey };
      el.setPointerCapture?.(e.pointerId);
    };
    const onMove = (e) => {
      if (!drag) return;
      e.preventDefault();
      e.stopPropagation();
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX; drag.y = e.clientY;
      if (drag.pan) this.pan(dx, dy); else this.orbit(dx, dy);
    };
    const onUp = (e) => {
      if (drag) el.releasePointerCapture?.(e.pointerId);
      drag = null;
    };
    const onWheel = (e) => {
      e.preventDefault();
      e.stopPropagation();
      this.zoom(Math.exp(Math.sign(e.deltaY) * Math.min(Math.abs(e.deltaY), 200) * 0.0015));
    };
    const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
    const onDbl = (e) => { stop(e); this.resetView(); };
    el.addEventListener("pointerdown", onDown);
    el.addEventListener("pointermove", onMove);
    el.addEventListener("pointerup", onUp);
    el.addEventListener("pointercancel", onUp);
    el.addEventListener("wheel", onWheel, { passive: false });
    el.addEventListener("contextmenu", stop);
    el.addEventListener("dblclick", onDbl);
    this._controls = { onDown, onMove, onUp, onWheel, stop, onDbl };
  }

  orbit(dx, dy) {
    const k = Math.PI / Math.max(200, this.canvas.clientHeight || 200);
    this.yaw -= dx * k;
    this.pitch = Math.max(-1.55, Math.min(1.55, this.pitch + dy * k));
    this.dirty = true;
  }

  pan(dx, dy) {
    const { right, down } = this.cameraFrame();
    const h = Math.max(1, this.canvas.clientHeight || 1);
    const s = (2 * this.distance * Math.tan(this.fovY / 2)) / h;
    for (let k = 0; k < 3; k++) this.target[k] -= (right[k] * dx + down[k] * dy) * s;
    this.dirty = true;
  }

  zoom(factor) {
    this.distance = Math.max(this.sceneRadius * 1e-3, Math.min(this.sceneRadius * 1e3, this.distance * factor));
    this.dirty = true;
  }

  dispose() {
    this._disposed = true;
    cancelAnimationFrame(this._frame);
    if (this.worker) this.worker.terminate();
    const el = this.canvas, c = this._controls;
    el.removeEventListener("pointerdown", c.onDown);
    el.removeEventListener("pointermove", c.onMove);
    el.removeEventListener("pointerup", c.onUp);
    el.removeEventListener("pointercancel", c.onUp);
    el.removeEventListener("wheel", c.onWheel);
    el.removeEventListener("contextmenu", c.stop);
    el.removeEventListener("dblclick", c.onDbl);
    const gl = this.gl;
    gl.deleteTexture(this.texture);
    gl.deleteBuffer(this.indexBuffer);
    gl.deleteProgram(this.program);
    gl.getExtension("WEBGL_lose_context")?.loseContext();
  }
}
