// Log-in and sign-up pages.
import { api } from "./api.js";
import { h, setChildren } from "./dom.js";

function field(label, input, hint) {
  return h("div", { class: "field" },
    h("label", { for: input.id }, label), input, hint ? h("p", { class: "hint" }, hint) : null);
}

function shell(title, subtitle, form, footer) {
  return h("section", { class: "auth-page" },
    h("div", { class: "auth-card card" },
      h("h1", {}, title),
      h("p", { class: "muted" }, subtitle),
      form,
      h("p", { class: "auth-switch" }, footer)));
}

function submitting(form, busy) {
  for (const el of form.elements) el.disabled = busy;
  form.setAttribute("aria-busy", busy ? "true" : "false");
}

// Submits the form's fields to `action`; on failure shows the server's reason and re-enables it.
function handleSubmit(form, error, action, fallback, onError = () => {}) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const data = Object.fromEntries(new FormData(form));
    submitting(form, true);
    try {
      await action(data);
    } catch (err) {
      error.textContent = err.message || fallback;
      submitting(form, false);
      onError();
    }
  });
}

export function loginView(main, { onLoggedIn }) {
  const error = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "stack", novalidate: false },
    field("Username", h("input", { id: "login-username", name: "username", autocomplete: "username", required: true })),
    field("Password", h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true })),
    error,
    h("button", { type: "submit", class: "btn btn-primary btn-block" }, "Log in"));
  handleSubmit(form, error, async (data) => {
    onLoggedIn(await api("/api/auth/login/", { method: "POST", json: data }));
  }, "Log in failed.", () => form.elements.password.select());
  const footer = h("span", {}, "New hospital? ", h("a", { href: "#/signup" }, "Create an account"));
  setChildren(main, shell("Log in", "Pneumonia screening for chest X-ray batches.", form, footer));
  signupOpen().then((open) => {
    if (!open) setChildren(footer, "New hospitals are added by the operator of this installation.");
  });
  form.elements.username.focus();
  return () => {};
}

// Whether this installation lets new hospitals sign up (off by default in production).
async function signupOpen() {
  try {
    return (await api("/api/auth/signup/")).enabled !== false;
  } catch {
    return true;  // unknown: keep the link; the sign-up itself answers with the reason
  }
}

export function signupView(main, { onLoggedIn }) {
  const error = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "stack" },
    field("Hospital", h("input", { id: "signup-hospital", name: "hospital", autocomplete: "organization", required: true, maxlength: "200" }),
      "Creating a new hospital makes you its admin. To join an existing hospital, ask its admin for an account."),
    field("Username", h("input", { id: "signup-username", name: "username", autocomplete: "username", required: true, maxlength: "150" })),
    field("Email", h("input", { id: "signup-email", name: "email", type: "email", autocomplete: "email" })),
    field("Password", h("input", { id: "signup-password", name: "password", type: "password", autocomplete: "new-password", required: true, minlength: "8" }),
      "At least 8 characters; not a common or all-numeric password."),
    error,
    h("button", { type: "submit", class: "btn btn-primary btn-block" }, "Create account"));
  handleSubmit(form, error, async (data) => {
    await api("/api/auth/signup/", { method: "POST", json: data });
    onLoggedIn(await api("/api/auth/login/", {
      method: "POST", json: { username: data.username, password: data.password },
    }));
  }, "Sign-up failed.");
  setChildren(main, shell("Create an account", "Register your hospital to start screening studies.", form,
    ["Already registered? ", h("a", { href: "#/login" }, "Log in")]));
  signupOpen().then((open) => {
    if (!open) {
      form.replaceWith(h("p", { class: "form-error", role: "alert" },
        "Sign-up is closed here: the operator of this installation adds new hospitals, and a hospital's admin adds its members."));
    }
  });
  form.elements.hospital.focus();
  return () => {};
}
