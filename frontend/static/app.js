"use strict";
// Minimal client: session login, upload, and a study list that polls with backoff.
const $ = (sel) => document.querySelector(sel);
const csrf = () => (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";

async function api(path, options = {}) {
  const headers = Object.assign({ "X-CSRFToken": csrf() }, options.headers || {});
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options, { headers }));
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  return { ok: response.ok, status: response.status, body };
}

let delay = 1000;
let timer = null;
function schedule() { clearTimeout(timer); timer = setTimeout(refresh, delay); }

async function refresh() {
  const { ok, body } = await api("/api/studies/");
  if (!ok) return;
  const rows = body.results.map((s) =>
    `<tr data-status="${s.status}"><td>${s.name || s.id}</td><td class="status">${s.status}</td>` +
    `<td>${s.progress.done + s.progress.failed}/${s.progress.total}</td></tr>`);
  $("#studies tbody").innerHTML = rows.join("");
  const busy = body.results.some((s) => s.status === "queued" || s.status === "processing");
  // Back off while nothing changes; stop polling once every study is finished.
  if (busy) { delay = Math.min(delay * 1.5, 10000); schedule(); }
}

async function showApp(me) {
  $("#whoami").textContent = `${me.username} · ${me.hospital || ""} (${me.role})`;
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  refresh();
}

async function start() {
  await api("/api/auth/login/");
  const me = await api("/api/auth/me/");
  if (me.ok) return showApp(me.body);
  $("#login-view").hidden = false;
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const { ok, body } = await api("/api/auth/login/", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(Object.fromEntries(form)),
  });
  if (ok) showApp(body); else $("#login-error").textContent = body.detail || "Login failed";
});

$("#upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const { body } = await api("/api/studies/", { method: "POST", body: new FormData(event.target) });
  $("#rejected").innerHTML = (body.rejected || []).map((r) => `<li>${r.name}: ${r.reason}</li>`).join("");
  delay = 1000;
  refresh();
});

start();
