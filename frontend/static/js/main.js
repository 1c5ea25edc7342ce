// Entry point: session bootstrap, header, and hash routing
// (#/studies, #/upload, #/studies/<id>, #/studies/<id>/images/<imageId>, #/settings, #/settings/dicom).
import { api } from "./api.js";
import { h, setChildren, toast } from "./dom.js";
import { loginView, signupView } from "./auth.js";
import { ROLE_LABEL } from "./labels.js";
import { settingsView } from "./settings.js";
import { studiesView } from "./studies.js";
import { studyView } from "./study.js";
import { uploadView } from "./upload.js";

const UUID = "[0-9a-fA-F-]{36}";
const ROUTES = [
  { name: "login", re: /^\/login$/, public: true },
  { name: "signup", re: /^\/signup$/, public: true },
  { name: "studies", re: /^\/studies$/ },
  { name: "upload", re: /^\/upload$/ },
  { name: "settings", re: /^\/settings(\/dicom)?$/ },
  { name: "study", re: new RegExp(`^/studies/(${UUID})$`) },
  { name: "image", re: new RegExp(`^/studies/(${UUID})/images/(${UUID})$`) },
];

const main = document.getElementById("main");
let me = null;
let current = null; // {name, studyId, cleanup, controller}
let returnTo = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "");
  let [path, query = ""] = raw.split("?");
  if (path === "" || path === "/") path = "/studies";
  for (const route of ROUTES) {
    const match = path.replace(/\/+$/, "").match(route.re);
    if (match) return { ...route, params: match.slice(1), query, path };
  }
  return { name: "missing", path, query, params: [] };
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function renderAccount() {
  const account = document.getElementById("account");
  const nav = document.getElementById("mainnav");
  account.hidden = !me;
  nav.hidden = !me;
  if (!me) return;
  document.getElementById("account-hospital").textContent = me.hospital || "No hospital";
  document.getElementById("account-user").textContent = me.username;
  document.getElementById("account-role").textContent = ROLE_LABEL[me.role] || me.role;
  document.getElementById("nav-settings").hidden = me.role !== "admin";
}

function highlightNav(name) {
  for (const link of document.querySelectorAll("#mainnav a")) {
    const section = ["upload", "settings"].includes(name) ? name : "studies";
    const active = link.dataset.nav === section;
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function teardown() {
  if (!current) return;
  if (current.controller && current.controller.destroy) current.controller.destroy();
  else if (typeof current.cleanup === "function") current.cleanup();
  current = null;
}

function onLoggedIn(user) {
  me = user;
  renderAccount();
  const target = returnTo && !/^#\/(login|signup)/.test(returnTo) ? returnTo : "#/studies";
  returnTo = null;
  navigate(target);
}

function route() {
  const r = parseHash();
  if (!me && !r.public) {
    returnTo = location.hash || "#/studies";
    history.replaceState(null, "", "#/login");
    return show({ name: "login", params: [], query: "" });
  }
  if (me && r.public) {
    history.replaceState(null, "", "#/studies");
    return show(parseHash());
  }
  return show(r);
}

function show(r) {
  highlightNav(r.name);
  // Moving between a study and one of its images keeps the study page (and its polling).
  if ((r.name === "study" || r.name === "image") && current && current.studyId === r.params[0]) {
    current.controller.setImage(r.name === "image" ? r.params[1] : null);
    return;
  }
  teardown();
  window.scrollTo(0, 0);
  const ctx = { navigate, onLoggedIn, query: r.query };
  switch (r.name) {
    case "login":
      current = { name: r.name, cleanup: loginView(main, ctx) };
      break;
    case "signup":
      current = { name: r.name, cleanup: signupView(main, ctx) };
      break;
    case "studies":
      current = { name: r.name, cleanup: studiesView(main, ctx) };
      break;
    case "upload":
      current = { name: r.name, cleanup: uploadView(main, ctx) };
      break;
    case "settings":
      current = { name: r.name, cleanup: settingsView(main, { ...ctx, me }) };
      break;
    case "study":
    case "image": {
      const controller = studyView(main, { ...ctx, studyId: r.params[0], imageId: r.params[1] });
      current = { name: r.name, studyId: r.params[0], controller };
      break;
    }
    default:
      current = { name: "missing" };
      setChildren(main, h("section", { class: "page" },
        h("div", { class: "card notice-card", role: "alert", id: "not-found" },
          h("h1", {}, "Page not found"),
          h("p", {}, "There is nothing at this address."),
          h("a", { class: "btn", href: "#/studies" }, "← Back to your studies"))));
  }
  if (!["image", "login", "signup"].includes(r.name)) main.focus({ preventScroll: true });
}

async function logout() {
  try {
    await api("/api/auth/logout/", { method: "POST" });
  } catch {
    // The session may already be gone; the page is reset either way.
  }
  me = null;
  teardown();
  renderAccount();
  await api("/api/auth/login/").catch(() => null); // a fresh CSRF cookie for the next login
  navigate("#/login");
}

window.addEventListener("pneumoscan:unauthenticated", () => {
  if (!me) return;
  me = null;
  renderAccount();
  toast("Your session has ended. Please log in again.", "error");
  route();
});

async function start() {
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  try {
    await api("/api/auth/login/"); // sets the CSRF cookie
    me = await api("/api/auth/me/");
  } catch {
    me = null;
  }
  renderAccount();
  route();
}

start();
