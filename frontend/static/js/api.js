// Thin client for the PneumoScan REST API (session + CSRF cookie authentication).

export class ApiError extends Error {
  constructor(status, body) {
    super(describe(body) || `Request failed (HTTP ${status})`);
    this.status = status;
    this.body = body;
  }
}

function describe(body) {
  if (!body) return "";
  if (typeof body === "string") return "";
  if (typeof body.detail === "string") return body.detail;
  if (typeof body === "object") {
    return Object.entries(body)
      .map(([field, value]) => {
        const text = Array.isArray(value) ? value.join(" ") : String(value);
        return field === "non_field_errors" ? text : `${field.replace(/_/g, " ")}: ${text}`;
      })
      .join(" ");
  }
  return "";
}

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

export async function api(path, { method = "GET", json, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (!SAFE.has(method)) headers["X-CSRFToken"] = csrfToken();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body, signal, credentials: "same-origin" });
  let data = null;
  if (response.status !== 204) {
    const type = response.headers.get("content-type") || "";
    data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 || (response.status === 403 && isAuthProblem(data))) {
      window.dispatchEvent(new CustomEvent("pneumoscan:unauthenticated"));
    }
    throw error;
  }
  return data;
}

function isAuthProblem(data) {
  const detail = data && typeof data.detail === "string" ? data.detail.toLowerCase() : "";
  return detail.includes("credentials") || detail.includes("not authenticated");
}

/**
 * POST a multipart form with XMLHttpRequest so that upload progress can be shown.
 * Resolves with {status, body} for any HTTP answer; rejects on network failure or abort.
 */
export function postWithProgress(path, formData, { onProgress, onUploaded } = {}) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", path);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.withCredentials = true;
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded, event.total);
    });
    xhr.upload.addEventListener("load", () => onUploaded && onUploaded());
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      resolve({ status: xhr.status, body });
    });
    xhr.addEventListener("error", () => reject(new Error("The network connection failed.")));
    xhr.addEventListener("abort", () => reject(new DOMException("Upload cancelled", "AbortError")));
    xhr.send(formData);
  });
  return { promise, abort: () => xhr.abort() };
}

export const urls = {
  studies: (query = "") => `/api/studies/${query ? `?${query}` : ""}`,
  study: (id) => `/api/studies/${encodeURIComponent(id)}/`,
  studyImages: (id) => `/api/studies/${encodeURIComponent(id)}/images/`,
  studyFiles: (id) => `/api/studies/${encodeURIComponent(id)}/files/`,
  close: (id) => `/api/studies/${encodeURIComponent(id)}/close/`,
  cancel: (id) => `/api/studies/${encodeURIComponent(id)}/cancel/`,
  retry: (id) => `/api/studies/${encodeURIComponent(id)}/retry/`,
  exportCsv: (id) => `/api/studies/${encodeURIComponent(id)}/export.csv`,
  exportJson: (id) => `/api/studies/${encodeURIComponent(id)}/export.json`,
  preview: (id) => `/api/images/${encodeURIComponent(id)}/preview/`,
  heatmap: (id) => `/api/images/${encodeURIComponent(id)}/heatmap/`,
};

/** Poll `tick` with exponential backoff while it reports work in progress. */
export function poller(tick, { base = 1000, max = 15000, factor = 1.6 } = {}) {
  let delay = base;
  let timer = null;
  let stopped = true;
  let running = false;

  async function run() {
    timer = null;
    if (stopped || running) return;
    if (document.hidden) return; // resumed by the visibility listener
    running = true;
    let outcome = { active: false, changed: false };
    try {
      outcome = await tick();
    } catch (error) {
      outcome = { active: !(error instanceof ApiError && error.status < 500), changed: false };
    } finally {
      running = false;
    }
    if (stopped) return;
    if (!outcome.active) {
      stopped = true;
      return;
    }
    // Back off while nothing changes; come back to the base rate when progress is seen.
    delay = outcome.changed ? base : Math.min(delay * factor, max);
    timer = setTimeout(run, delay);
  }

  function onVisible() {
    if (!document.hidden && !stopped && !timer && !running) run();
  }
  document.addEventListener("visibilitychange", onVisible);

  return {
    start() {
      stopped = false;
      delay = base;
      clearTimeout(timer);
      timer = setTimeout(run, delay);
    },
    now() {
      stopped = false;
      delay = base;
      clearTimeout(timer);
      run();
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
      timer = null;
    },
    destroy() {
      this.stop();
      document.removeEventListener("visibilitychange", onVisible);
    },
    get active() {
      return !stopped;
    },
    get delay() {
      return delay;
    },
  };
}
