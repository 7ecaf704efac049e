// The demo page: pick or drop a photo, submit it to the public API, follow the job's Server-Sent Events,
// compare the result with bicubic at the same size, download it. No build step, no dependencies.
//
// Choices (README, "The demo page"):
// - The event stream is read with fetch(), not EventSource, because EventSource cannot send the
//   Authorization header and an API key must never go into a URL.
// - The "before" image of a ZSSR job is a second job, method=bicubic, with the same image, scale and region:
//   the server's own bicubic (Pillow), at exactly the result's size, rather than the browser's canvas
//   resampling, whose filter differs between browsers. For a bicubic job, "before" is the input's own
//   pixels enlarged by nearest neighbour on a canvas.

const KEY_STORAGE = 'upscaler.apiKey';
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
const LARGE_PHOTO_PIXELS = 400 * 400;  // above this, a region is proposed (as the seed demo's random crop)
const PREVIEW_REGION = 256;
const MAX_RECONNECTS = 8;

const $ = (id) => document.getElementById(id);
const ui = {
  accessStatus: $('access-status'), readyStatus: $('ready-status'), keyDetails: $('key-details'),
  keyForm: $('key-form'), keyInput: $('api-key'),
  forgetKey: $('forget-key'), form: $('job-form'), dropZone: $('drop-zone'), file: $('file'),
  fileStatus: $('file-status'), preview: $('preview'), previewImg: $('preview-img'), regionBox: $('region-box'),
  scale: $('scale'), method: $('method'), preset: $('preset'), useRegion: $('use-region'),
  kernelOption: $('kernel-option'), estimateKernel: $('estimate-kernel'),
  kernelFigure: $('kernel-figure'), kernelCanvas: $('kernel-canvas'), kernelCaption: $('kernel-caption'),
  regionNote: $('region-note'), cropX: $('crop-x'), cropY: $('crop-y'), cropW: $('crop-w'), cropH: $('crop-h'),
  randomRegion: $('random-region'), centreRegion: $('centre-region'), submit: $('submit'), cancel: $('cancel'),
  message: $('message'), progressCard: $('progress-card'), progressBar: $('progress-bar'),
  progressText: $('progress-text'), lossFigure: $('loss-figure'), lossLine: $('loss-line'),
  lossCaption: $('loss-caption'),
  resultCard: $('result-card'), resultSummary: $('result-summary'), compare: $('compare'),
  beforeImg: $('before-img'), afterImg: $('after-img'), beforeTag: $('before-tag'), afterTag: $('after-tag'),
  split: $('split'), zoom: $('zoom'), download: $('download'),
};

const state = {
  key: localStorage.getItem(KEY_STORAGE) || '',
  file: null,
  photo: null,        // {width, height, element} once the browser could decode the file
  previewUrl: null,
  resultUrls: [],     // object URLs of the last result, revoked when the next run starts
  run: null,          // {controller, jobId} of the job being followed
  losses: [],         // [step, loss] pairs of the current job's training
};

// --- the API -------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders(extra = {}) {
  return state.key ? {...extra, Authorization: `Bearer ${state.key}`} : {...extra};
}

async function errorFrom(response) {
  // Every API error is {"error": {"code", "message"}}: show the API's own message.
  let code = `http_${response.status}`;
  let message = `the API answered ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) ({code, message} = body.error);
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, code, message);
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: authHeaders(options.headers)});
  if (!response.ok) throw await errorFrom(response);
  return response;
}

// --- Server-Sent Events over fetch() -------------------------------------------------------------------

// Parse a text/event-stream body into {type, data, id} events (the WHATWG event-stream rules).
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = {type: '', data: [], id: null};
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      let text = buffer + value;
      let held = '';
      if (text.endsWith('\r')) { held = '\r'; text = text.slice(0, -1); }  // maybe half of "\r\n"
      const lines = text.split(/\r\n|\r|\n/);
      buffer = lines.pop() + held;
      for (const line of lines) {
        if (line === '') {
          if (event.data.length) yield {type: event.type || 'message', data: event.data.join('\n'), id: event.id};
          event = {type: '', data: [], id: null};
          continue;
        }
        if (line.startsWith(':')) continue;  // a comment: the server's heartbeat
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? '' : line.slice(colon + 1);
        if (fieldValue.startsWith(' ')) fieldValue = fieldValue.slice(1);
        if (field === 'event') event.type = fieldValue;
        else if (field === 'data') event.data.push(fieldValue);
        else if (field === 'id' && !fieldValue.includes('\0')) event.id = fieldValue;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason); }, {once: true});
  });
}

// Follow a job until its terminal status; reconnect with Last-Event-ID if the connection drops.
// Resolves with the job as its terminal `status` event gave it.
async function followJob(jobId, {onStatus = () => {}, onProgress = () => {}, onReconnect = () => {}, signal} = {}) {
  let lastEventId = null;
  let failures = 0;
  for (;;) {
    const headers = authHeaders({Accept: 'text/event-stream'});
    if (lastEventId) headers['Last-Event-ID'] = lastEventId;
    let response = null;
    try {
      response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {headers, signal, cache: 'no-store'});
    } catch (err) {
      if (signal?.aborted) throw err;
    }
    if (response && !response.ok) throw await errorFrom(response);  // 401, 404, 410: retrying cannot help
    if (response) {
      try {
        for await (const event of readEvents(response.body)) {
          failures = 0;
          if (event.id) lastEventId = event.id;
          const data = JSON.parse(event.data);
          if (event.type === 'status') {
            onStatus(data);
            if (TERMINAL.has(data.status)) return data;
          } else if (event.type === 'progress') {
            onProgress(data);
          } else if (event.type === 'error') {
            throw new ApiError(410, data.error.code, data.error.message);
          }
        }
      } catch (err) {
        if (signal?.aborted || err instanceof ApiError) throw err;
      }
    }
    failures += 1;  // the stream closed before the terminal event: reconnect, saying what was seen
    if (failures > MAX_RECONNECTS) throw new Error('lost the connection to the API');
    onReconnect(failures);
    await sleep(Math.min(500 * 2 ** (failures - 1), 5000), signal);
  }
}

// --- access: open local mode or an API key -------------------------------------------------------------

async function checkAccess() {
  // One cheap authenticated read says whether this API wants a key, and whether the saved one works.
  try {
    const response = await fetch('/v1/jobs?limit=1', {headers: authHeaders()});
    if (response.ok) {
      ui.accessStatus.textContent = state.key ? 'Using the API key saved in this browser.'
        : 'Open access (local mode): no API key needed.';
    } else if (response.status === 401) {
      const error = await errorFrom(response);
      ui.accessStatus.textContent = state.key ? `The API refused the saved key: ${error.message}`
        : 'This API needs a key: enter it below (once; this browser keeps it).';
      ui.keyDetails.open = true;
      if (!state.key) ui.keyInput.focus();
    } else {
      ui.accessStatus.textContent = `The API answered: ${(await errorFrom(response)).message}`;
    }
  } catch (_) {
    ui.accessStatus.textContent = 'Cannot reach the API.';
  }
  try {
    const ready = await fetch('/readyz');
    const body = await ready.json();
    ui.readyStatus.hidden = ready.ok;
    if (!ready.ok) {
      ui.readyStatus.textContent = body.redis === false ? 'The job store (Redis) is not reachable.'
        : 'No worker is running: jobs will wait in the queue until one starts (python -m worker).';
    }
  } catch (_) { /* readiness is advice only */ }
}

ui.keyInput.value = state.key;
ui.keyForm.addEventListener('submit', (event) => {
  event.preventDefault();
  state.key = ui.keyInput.value.trim();
  if (state.key) localStorage.setItem(KEY_STORAGE, state.key);
  else localStorage.removeItem(KEY_STORAGE);
  checkAccess();
});
ui.forgetKey.addEventListener('click', () => {
  state.key = '';
  ui.keyInput.value = '';
  localStorage.removeItem(KEY_STORAGE);
  checkAccess();
});

// --- the photo and its region --------------------------------------------------------------------------

function showMessage(text) {
  ui.message.textContent = text;
  ui.message.hidden = !text;
}

function useFile(file) {
  if (!file) return;
  state.file = file;
  state.photo = null;
  showMessage('');
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  ui.fileStatus.textContent = `${file.name} (${formatBytes(file.size)}): loading a preview…`;
  ui.previewImg.onload = () => {
    const {naturalWidth: width, naturalHeight: height} = ui.previewImg;
    state.photo = {width, height};
    ui.preview.hidden = false;
    ui.fileStatus.textContent = `${file.name}: ${width}×${height} pixels, ${formatBytes(file.size)}.`;
    const large = width * height > LARGE_PHOTO_PIXELS;
    ui.useRegion.checked = large;
    if (large) {
      placeRegion(centredRegion(PREVIEW_REGION));
      ui.regionNote.textContent = `A large photo: only a ${ui.cropW.value}×${ui.cropH.value} region is selected, ` +
        'for a quick preview. Untick the box to upscale the whole photo.';
    } else {
      placeRegion(centredRegion(Math.min(width, height, PREVIEW_REGION)));
      ui.regionNote.textContent = '';
    }
  };
  ui.previewImg.onerror = () => {
    ui.preview.hidden = true;
    ui.useRegion.checked = false;
    drawRegion();
    ui.fileStatus.textContent = `${file.name} (${formatBytes(file.size)}): this browser cannot show it; ` +
      'you can still submit it and the API will say whether it takes it.';
  };
  ui.previewImg.src = state.previewUrl;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

ui.file.addEventListener('change', () => useFile(ui.file.files[0]));
for (const type of ['dragenter', 'dragover']) {
  ui.dropZone.addEventListener(type, (event) => { event.preventDefault(); ui.dropZone.classList.add('over'); });
}
ui.dropZone.addEventListener('dragleave', () => ui.dropZone.classList.remove('over'));
// A photo dropped anywhere on the page is taken (rather than the browser navigating away to open it).
window.addEventListener('dragover', (event) => event.preventDefault());
window.addEventListener('drop', (event) => {
  event.preventDefault();
  ui.dropZone.classList.remove('over');
  if (event.dataTransfer?.files.length) useFile(event.dataTransfer.files[0]);
});

function readRegion() {
  return {x: intOf(ui.cropX), y: intOf(ui.cropY), width: intOf(ui.cropW), height: intOf(ui.cropH)};
}

function intOf(input) {
  const value = Number.parseInt(input.value, 10);
  return Number.isFinite(value) ? value : 0;
}

function placeRegion({x, y, width, height}) {
  ui.cropX.value = x;
  ui.cropY.value = y;
  ui.cropW.value = width;
  ui.cropH.value = height;
  drawRegion();
}

function centredRegion(size) {
  const {width, height} = state.photo;
  const w = Math.min(size, width);
  const h = Math.min(size, height);
  return {x: Math.floor((width - w) / 2), y: Math.floor((height - h) / 2), width: w, height: h};
}

function randomRegion(size) {
  const {width, height} = state.photo;
  const w = Math.min(size, width);
  const h = Math.min(size, height);
  return {x: Math.floor(Math.random() * (width - w + 1)), y: Math.floor(Math.random() * (height - h + 1)),
          width: w, height: h};
}

// The region drawn over the preview, in the preview's displayed pixels.
function drawRegion() {
  if (!state.photo || !ui.useRegion.checked) {
    ui.regionBox.hidden = true;
    return;
  }
  const ratio = ui.previewImg.clientWidth / state.photo.width;
  const region = readRegion();
  Object.assign(ui.regionBox.style, {
    left: `${region.x * ratio}px`, top: `${region.y * ratio}px`,
    width: `${region.width * ratio}px`, height: `${region.height * ratio}px`,
  });
  ui.regionBox.hidden = false;
}

for (const input of [ui.cropX, ui.cropY, ui.cropW, ui.cropH]) {
  input.addEventListener('input', () => { ui.useRegion.checked = true; drawRegion(); });  // editing it means using it
}
ui.useRegion.addEventListener('input', drawRegion);
window.addEventListener('resize', drawRegion);
ui.randomRegion.addEventListener('click', () => {
  if (!state.photo) return showMessage('Choose a photo first.');
  ui.useRegion.checked = true;
  placeRegion(randomRegion(PREVIEW_REGION));
});
ui.centreRegion.addEventListener('click', () => {
  if (!state.photo) return showMessage('Choose a photo first.');
  ui.useRegion.checked = true;
  placeRegion(centredRegion(PREVIEW_REGION));
});

// Drag on the preview to draw a region (the number fields do the same from the keyboard).
let dragStart = null;
function photoPoint(event) {
  const box = ui.previewImg.getBoundingClientRect();
  const ratio = state.photo.width / box.width;
  const clamp = (v, max) => Math.max(0, Math.min(max, Math.round(v)));
  return {x: clamp((event.clientX - box.left) * ratio, state.photo.width),
          y: clamp((event.clientY - box.top) * ratio, state.photo.height)};
}
ui.preview.addEventListener('pointerdown', (event) => {
  if (!state.photo) return;
  dragStart = photoPoint(event);
  ui.preview.setPointerCapture(event.pointerId);
});
ui.preview.addEventListener('pointermove', (event) => {
  if (!dragStart) return;
  const end = photoPoint(event);
  const width = Math.abs(end.x - dragStart.x);
  const height = Math.abs(end.y - dragStart.y);
  if (width < 2 || height < 2) return;
  ui.useRegion.checked = true;
  placeRegion({x: Math.min(end.x, dragStart.x), y: Math.min(end.y, dragStart.y), width, height});
});
for (const type of ['pointerup', 'pointercancel']) ui.preview.addEventListener(type, () => { dragStart = null; });

// --- a run: submit, follow, show the result ------------------------------------------------------------

function submission(file, method) {
  const form = new FormData();
  form.append('image', file, file.name || 'image');
  form.append('scale', ui.scale.value);
  form.append('method', method);
  if (method === 'zssr') form.append('preset', ui.preset.value);
  if (method === 'zssr' && ui.estimateKernel.checked) form.append('kernel', 'estimate');
  if (ui.useRegion.checked) {
    const r = readRegion();
    form.append('crop', `${r.x},${r.y},${r.width},${r.height}`);
  }
  return form;
}

async function submitJob(file, method, signal) {
  const response = await api('/v1/jobs', {method: 'POST', body: submission(file, method), signal});
  return response.json();
}

function resetRun() {
  state.run?.controller.abort();
  for (const url of state.resultUrls) URL.revokeObjectURL(url);
  state.resultUrls = [];
  state.losses = [];
  ui.lossLine.setAttribute('points', '');
  ui.lossCaption.textContent = 'Training loss (L1, log scale): appears while ZSSR trains.';
  ui.lossFigure.hidden = ui.method.value !== 'zssr';
  ui.resultCard.hidden = true;
  ui.progressBar.value = 0;
  ui.progressText.textContent = '';
  showMessage('');
}

ui.form.addEventListener('submit', async (event) => {
  event.preventDefault();
  if (!state.file) {
    showMessage('Choose a photo first (drop it on the box, or press the box to pick a file).');
    ui.file.focus();
    return;
  }
  resetRun();
  const controller = new AbortController();
  const method = ui.method.value;
  const run = {controller, jobId: null, method, file: state.file};  // what was sent, whatever is picked next
  state.run = run;
  ui.submit.disabled = true;
  try {
    const job = await submitJob(run.file, method, controller.signal);
    state.run.jobId = job.id;
    ui.cancel.disabled = false;
    ui.progressCard.hidden = false;
    showStatus(job);
    // The bicubic baseline for the comparison: same image, scale and region (milliseconds of work).
    const baseline = method === 'zssr' ? submitJob(run.file, 'bicubic', controller.signal).catch((err) => err) : null;
    const done = await followJob(job.id, {
      signal: controller.signal, onStatus: showStatus, onProgress: showProgress,
      onReconnect: (n) => { ui.progressText.textContent = `Connection lost; reconnecting (attempt ${n})…`; },
    });
    ui.cancel.disabled = true;
    if (done.status === 'succeeded') await showResult(done, run, await baseline);
    else if (done.status === 'failed') showMessage(`The job failed: ${done.error?.message || 'no reason given'}`);
    else showMessage('The job was canceled.');
  } catch (err) {
    if (!controller.signal.aborted) showMessage(err instanceof ApiError ? err.message : `Error: ${err.message}`);
  } finally {
    if (state.run?.controller === controller) {
      ui.submit.disabled = false;
      ui.cancel.disabled = true;
    }
  }
});

ui.cancel.addEventListener('click', async () => {
  const jobId = state.run?.jobId;
  if (!jobId) return;
  ui.cancel.disabled = true;
  try {
    await api(`/v1/jobs/${jobId}/cancel`, {method: 'POST'});
    ui.progressText.textContent = 'Canceling…';
  } catch (err) {
    showMessage(err.message);
  }
});

// --- progress ------------------------------------------------------------------------------------------

const PHASE_WEIGHT = {zssr: {training: [0, 0.9], inference: [0.9, 1]}, bicubic: {inference: [0, 1]}};

function overallFraction(method, progress) {
  if (progress.phase === 'done') return 1;
  const [start, end] = (PHASE_WEIGHT[method] || {})[progress.phase] || [0, 0];
  return start + (end - start) * (progress.fraction || 0);
}

function showStatus(job) {
  if (job.status === 'queued' && state.losses.length) {  // handed back to the queue: the next run starts afresh
    state.losses = [];
    ui.lossLine.setAttribute('points', '');
  }
  ui.progressBar.value = job.status === 'succeeded' ? 1 : overallFraction(job.params.method, job.progress);
  const words = {
    queued: 'Queued: waiting for a worker…',
    running: 'Running…',
    succeeded: `Done in ${seconds(job.metrics.run_seconds)} (after ${seconds(job.metrics.queue_seconds)} in the queue).`,
    failed: `Failed: ${job.error?.message || ''}`,
    canceled: 'Canceled.',
  };
  ui.progressText.textContent = words[job.status] || job.status;
  ui.progressBar.dataset.status = job.status;
  if (job.status === 'running') showProgress({status: job.status, ...job.progress}, job.params.method);
}

function seconds(value) {
  return value == null ? '–' : `${Number(value).toFixed(1)} s`;
}

function showProgress(progress, method = state.run?.method) {
  ui.progressBar.value = overallFraction(method, progress);
  const total = progress.total_steps ? ` of at most ${progress.total_steps}` : '';
  if (progress.phase === 'training') {
    const loss = progress.loss == null ? '' : `, loss ${Number(progress.loss).toPrecision(3)}`;
    ui.progressText.textContent = `Training on your photo: step ${progress.step}${total}${loss}`;
    if (progress.loss != null && progress.loss > 0) addLoss(progress.step, progress.loss, progress.total_steps);
  } else if (progress.phase === 'inference') {
    ui.progressText.textContent = progress.total_steps
      ? `Enlarging: ${progress.step} of ${progress.total_steps}` : 'Enlarging…';
  }
}

function addLoss(step, loss, totalSteps) {
  const last = state.losses[state.losses.length - 1];
  if (last && last[0] === step) return;
  state.losses.push([step, loss]);
  const logs = state.losses.map(([, l]) => Math.log10(l));
  const low = Math.min(...logs);
  const high = Math.max(...logs);
  const span = high - low || 1;
  const maxStep = Math.max(totalSteps || 0, step, 1);
  const points = state.losses.map(([s], i) => {
    const x = (s / maxStep) * 300;
    const y = 95 - ((logs[i] - low) / span) * 90;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  ui.lossLine.setAttribute('points', points.join(' '));
  ui.lossLine.dataset.points = String(state.losses.length);
  ui.lossCaption.textContent = `Training loss (L1, log scale): ${Number(loss).toPrecision(3)} at step ${step}` +
    ` (lowest ${Number(10 ** low).toPrecision(3)}, highest ${Number(10 ** high).toPrecision(3)}).`;
}

// --- the result: comparison and download ---------------------------------------------------------------

async function fetchImageUrl(jobId, signal) {
  const blob = await (await api(`/v1/jobs/${jobId}/result`, {signal})).blob();
  const url = URL.createObjectURL(blob);
  state.resultUrls.push(url);
  return {url, blob};
}

async function baselineUrl(baseline, signal) {
  if (baseline instanceof Error) throw baseline;
  const done = await followJob(baseline.id, {signal});
  if (done.status !== 'succeeded') throw new Error(`the bicubic job ${done.status}`);
  return (await fetchImageUrl(baseline.id, signal)).url;
}

// The input's own pixels (the region, if any) enlarged by nearest neighbour to the result's size.
async function nearestUrl(job, file) {
  const photo = await createImageBitmap(file);  // applies the EXIF orientation, as the server does
  const crop = job.params.crop || {x: 0, y: 0, width: photo.width, height: photo.height};
  const canvas = document.createElement('canvas');
  canvas.width = job.output.width;
  canvas.height = job.output.height;
  const context = canvas.getContext('2d');
  context.imageSmoothingEnabled = false;
  context.drawImage(photo, crop.x, crop.y, crop.width, crop.height, 0, 0, canvas.width, canvas.height);
  photo.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  const url = URL.createObjectURL(blob);
  state.resultUrls.push(url);
  return url;
}

function loaded(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('the browser could not show the image'));
    img.src = url;
  });
}

async function showResult(job, run, baseline) {
  const {method, file, controller: {signal}} = run;
  const {url, blob} = await fetchImageUrl(job.id, signal);
  const extension = (job.output.content_type || 'image/png').split('/')[1].replace('jpeg', 'jpg');
  const stem = (file.name || 'image').replace(/\.[^.]*$/, '').replace(/[^\w.-]+/g, '_') || 'image';
  ui.download.href = url;
  ui.download.download = `${stem}_${method}_x${job.params.scale}.${extension}`;
  ui.afterTag.textContent = method === 'zssr' ? 'ZSSR' : 'Bicubic';
  ui.afterImg.alt = `The ${ui.afterTag.textContent} result, ${job.output.width}×${job.output.height}`;
  await loaded(ui.afterImg, url);
  let beforeNote = '';
  let beforeUrl;
  try {
    beforeUrl = method === 'zssr' ? await baselineUrl(baseline, signal) : await nearestUrl(job, file);
    ui.beforeTag.textContent = method === 'zssr' ? 'Bicubic' : 'Input pixels';
  } catch (err) {
    beforeUrl = url;  // still show the result; say why there is nothing to compare with
    ui.beforeTag.textContent = 'No baseline';
    beforeNote = ` (no comparison: ${err.message})`;
  }
  ui.beforeImg.alt = `${ui.beforeTag.textContent}, at the same size`;
  await loaded(ui.beforeImg, beforeUrl);
  const steps = job.metrics.train_steps ? `, ${job.metrics.train_steps} training steps` : '';
  const device = job.metrics.device ? ` on ${job.metrics.device}` : '';
  const region = job.params.crop ? ` (region ${job.params.crop.width}×${job.params.crop.height})` : '';
  ui.resultSummary.textContent = `${job.input.width}×${job.input.height}${region} → ` +
    `${job.output.width}×${job.output.height}, ${formatBytes(blob.size)}; ${seconds(job.metrics.run_seconds)}` +
    `${steps}${device}.${selfCheckNote(job.metrics.fallback)}${beforeNote}`;
  drawKernel(job.kernel);
  ui.resultCard.hidden = false;
  ui.download.focus();
}

// ZSSR's self-check (job.metrics.fallback): where the net did not beat bicubic on data it never trained on, the
// result was blended toward bicubic ("blend 0.41": that much of the net kept) or is bicubic.
function selfCheckNote(fallback) {
  if (!fallback) return '';
  if (fallback === 'cubic') return ' The self-check found the net no better than bicubic here: this is bicubic.';
  const kept = Number(fallback.split(' ')[1]);
  return ` Blended toward bicubic by the self-check (${Math.round(kept * 100)}% of the net kept).`;
}

// The estimated blur kernel (job.kernel, kernel=estimate) as a small grey image: one canvas pixel per kernel tap,
// scaled up by CSS without smoothing; white is the largest weight.
function drawKernel(kernel) {
  ui.kernelFigure.hidden = !kernel;
  if (!kernel) return;
  const [rows, columns] = kernel.size;
  const largest = Math.max(...kernel.values.flat(), 1e-12);
  ui.kernelCanvas.width = columns;
  ui.kernelCanvas.height = rows;
  ui.kernelCanvas.style.setProperty('--taps', columns);  // its shown width grows with the kernel (style.css)
  const context = ui.kernelCanvas.getContext('2d');
  const pixels = context.createImageData(columns, rows);
  kernel.values.flat().forEach((value, i) => {
    const grey = Math.round(255 * Math.max(0, value) / largest);
    pixels.data.set([grey, grey, grey, 255], i * 4);
  });
  context.putImageData(pixels, 0, 0);
  const estimators = {prior: 'the learnt kernel prior', kernelgan: 'KernelGAN'};
  const source = kernel.source === 'estimated'
    ? `estimated by ${estimators[kernel.estimator] || 'the service'}` : kernel.source;
  // factor: the core scaled the estimate to the widest blur that explains the photo (sr/blind.py)
  const fitted = kernel.factor != null && kernel.factor !== 1
    ? `, ${kernel.factor < 1 ? 'narrowed' : 'widened'} ×${kernel.factor} to fit the photo` : '';
  ui.kernelCaption.textContent = `Blur kernel ${source}${fitted}: ${rows}×${columns} pixels, enlarged (white = ` +
    'largest weight). ZSSR trained on examples blurred with it.';
}

// Kernel estimation is part of ZSSR: the choice is offered only with it.
function showKernelOption() {
  ui.kernelOption.hidden = ui.method.value !== 'zssr';
}
ui.method.addEventListener('change', showKernelOption);
showKernelOption();

function setSplit(percent) {
  ui.compare.style.setProperty('--split', `${percent}%`);
}
ui.split.addEventListener('input', () => setSplit(ui.split.value));
setSplit(ui.split.value);

// Dragging across the comparison moves the split too (the range input is the keyboard way).
let splitting = false;
const stack = ui.compare.querySelector('.compare-stack');
function splitAt(event) {
  const box = stack.getBoundingClientRect();
  const percent = Math.max(0, Math.min(100, Math.round(((event.clientX - box.left) / box.width) * 100)));
  ui.split.value = percent;
  setSplit(percent);
}
stack.addEventListener('pointerdown', (event) => { splitting = true; stack.setPointerCapture(event.pointerId); splitAt(event); });
stack.addEventListener('pointermove', (event) => { if (splitting) splitAt(event); });
for (const type of ['pointerup', 'pointercancel']) stack.addEventListener(type, () => { splitting = false; });

ui.zoom.addEventListener('click', () => {
  const actual = ui.compare.classList.toggle('actual');
  ui.zoom.setAttribute('aria-pressed', String(actual));
  ui.zoom.textContent = actual ? 'Fit to the window' : 'Actual pixels';
});

checkAccess();
