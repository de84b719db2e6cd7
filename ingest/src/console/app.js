// The Orderflow console: a client of the API like any other. Pages are hash routes
// (#/orders, #/orders/<id>, #/new, #/products, #/customers, #/pipeline, #/login); every element
// is built with the DOM API (never from HTML strings), so text from orders cannot run as script.

const STATUSES = ["accepted", "validated", "rejected", "paid", "payment_failed", "invoiced",
  "cancelled", "shipped"];
const FAILED = new Set(["rejected", "payment_failed"]);

// --- Session ---------------------------------------------------------------------------------

const session = {
  get access() { return sessionStorage.getItem("of.access"); },
  get refresh() { return sessionStorage.getItem("of.refresh"); },
  me: null,
  save(tokens) {
    sessionStorage.setItem("of.access", tokens.access_token);
    sessionStorage.setItem("of.refresh", tokens.refresh_token);
  },
  clear() {
    sessionStorage.removeItem("of.access");
    sessionStorage.removeItem("of.refresh");
    this.me = null;
  },
  get admin() { return this.me?.role === "admin"; },
};

// --- API ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

let refreshing = null;

async function refreshTokens() {
  if (!session.refresh) return false;
  refreshing ??= (async () => {
    const res = await fetch("/v1/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: session.refresh }),
    });
    if (!res.ok) return false;
    session.save(await res.json());
    return true;
  })().finally(() => { refreshing = null; });
  return refreshing;
}

// A request with the access token, refreshed once on a 401; the raw response.
async function raw(path, options = {}, retried = false) {
  const headers = new Headers(options.headers || {});
  if (session.access) headers.set("Authorization", `Bearer ${session.access}`);
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 && !retried && session.refresh && await refreshTokens()) {
    return raw(path, options, true);
  }
  if (!res.ok) {
    let problem = null;
    try { problem = await res.json(); } catch { /* not JSON */ }
    if (res.status === 401 && path !== "/v1/auth/login") {
      session.clear();
      go("#/login");
    }
    throw new ApiError(res.status, problem);
  }
  return res;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const res = await raw(path, options);
  if (res.status === 204) return null;
  return res.json();
}

// Reads a server-sent event stream (with the bearer token, which EventSource cannot send) and
// calls `onEvent(name, data)` per event; reconnects after a drop until `signal` aborts.
async function follow(path, onEvent, signal, onState = () => {}) {
  let delay = 500;
  while (!signal.aborted) {
    try {
      const res = await raw(path, { headers: { Accept: "text/event-stream" }, signal });
      onState(true);
      delay = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) onEvent(name, JSON.parse(data.join("\n")));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status !== 503) { showError(e); return; }
    }
    onState(false);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// --- DOM helpers -------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const main = () => document.getElementById("main");

// Nodes, with the `false` and `null` of conditional parts left out.
const present = (nodes) => nodes.flat().filter((n) => n !== false && n !== null && n !== undefined);

function render(...nodes) {
  main().replaceChildren(...present(nodes));
}

function money(cents, currency) {
  if (cents === undefined || cents === null) return "—";
  return `${(cents / 100).toFixed(2)} ${currency || ""}`.trim();
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status.replace("_", " "));
}

function banner(kind, text) {
  const b = document.getElementById("banner");
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.className = kind;
  b.textContent = text;
  b.hidden = false;
}

function showError(e) {
  banner("error", e instanceof ApiError ? (e.problem.detail || e.message) : `Something went wrong: ${e.message || e}`);
}

// Shows a problem's field errors next to the fields (`data-field` names them), and its detail
// in the banner when no field takes it.
function showProblem(form, e) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  if (!(e instanceof ApiError)) { showError(e); return; }
  let placed = 0;
  for (const err of e.problem.errors || []) {
    const input = form.querySelector(`[data-field="${CSS.escape(err.field)}"]`);
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    const id = `err-${Math.random().toString(36).slice(2)}`;
    input.setAttribute("aria-describedby", id);
    input.insertAdjacentElement("afterend", h("span", { class: "field-error", id, role: "alert" }, err.message));
    if (!placed) input.focus();
    placed++;
  }
  const rest = (e.problem.errors || []).length - placed;
  if (!placed || rest > 0) showError(e);
}

function field(label, name, attrs = {}) {
  return h("label", {}, label, h("input", { name, dataset: { field: attrs.field || name }, ...attrs, field: undefined }));
}

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

// Runs `action` for a form's submit: clears old errors, shows new ones next to the fields.
function onSubmit(form, action) {
  // The API checks every field and names the wrong ones: its answer is shown next to them.
  form.noValidate = true;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    banner();
    for (const old of form.querySelectorAll(".field-error")) old.remove();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try { await action(formData(form)); } catch (e) { showProblem(form, e); } finally {
      if (button) button.disabled = false;
    }
  });
  return form;
}

// --- Navigation --------------------------------------------------------------------------------

let pageAbort = new AbortController();

function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

function nav() {
  const n = document.getElementById("nav");
  if (!session.me) { n.replaceChildren(); return; }
  const here = location.hash.split("?")[0];
  const link = (href, text) => h("a", { href, "aria-current": here === href ? "page" : null }, text);
  n.replaceChildren(...present([
    link("#/orders", "Orders"),
    link("#/new", "New order"),
    session.admin && link("#/products", "Products"),
    session.admin && link("#/customers", "Customers"),
    session.admin && link("#/pipeline", "Pipeline"),
    h("span", { class: "who", id: "who" }, `${session.me.name} · ${session.me.role}`),
    h("button", { type: "button", id: "logout", onclick: logout }, "Log out"),
  ]));
}

async function logout() {
  try { if (session.refresh) await api("POST", "/v1/auth/logout", { refresh_token: session.refresh }); } catch { /* gone already */ }
  session.clear();
  go("#/login");
}

async function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  banner();
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/orders").split("/").filter(Boolean);
  if (!session.access && !["login", "register"].includes(parts[0])) { go("#/login"); return; }
  if (session.access && !session.me) {
    try { session.me = await api("GET", "/v1/customers/me"); } catch (e) { session.clear(); go("#/login"); return; }
  }
  nav();
  try {
    switch (parts[0]) {
      case "login": return loginPage();
      case "register": return registerPage();
      case "new": return newOrderPage();
      case "products": return productsPage();
      case "customers": return customersPage(params);
      case "pipeline": return pipelinePage();
      case "orders":
        if (parts[1]) return orderPage(decodeURIComponent(parts[1]));
        return ordersPage(params);
      default: go("#/orders");
    }
  } catch (e) { showError(e); } finally {
    main().focus({ preventScroll: true });
  }
}

// --- Log in, register --------------------------------------------------------------------------

function loginPage() {
  document.title = "Log in · Orderflow";
  const form = onSubmit(h("form", { class: "grid", id: "login-form" },
    field("Email", "email", { type: "email", autocomplete: "username", required: true, id: "login-email" }),
    field("Password", "password", { type: "password", autocomplete: "current-password", required: true, id: "login-password" }),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "login-submit" }, "Log in")),
  ), async (data) => {
    const tokens = await api("POST", "/v1/auth/login", { email: data.email, password: data.password });
    session.save(tokens);
    session.me = null;
    go("#/orders");
  });
  render(h("h1", {}, "Log in"), h("div", { class: "card" }, form,
    h("p", { class: "muted" }, "On `orderflow run`: admin@example.com / admin123, user@example.com / user123. ",
      h("a", { href: "#/register" }, "Create an account"))));
  form.querySelector("input").focus();
}

function registerPage() {
  document.title = "Register · Orderflow";
  const verify = onSubmit(h("form", { class: "grid", id: "verify-form" },
    field("Email", "email", { type: "email", required: true }),
    field("Code from the email", "code", { required: true, autocomplete: "one-time-code", inputmode: "numeric" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Verify")),
  ), async (data) => {
    await api("POST", "/v1/auth/verify", data);
    banner("info", "Email verified: you can log in now.");
    go("#/login");
  });
  const register = onSubmit(h("form", { class: "grid", id: "register-form" },
    field("Name", "name", { required: true, autocomplete: "name" }),
    field("Email", "email", { type: "email", required: true, autocomplete: "email" }),
    field("Password", "password", { type: "password", required: true, autocomplete: "new-password" }),
    field("Password again", "confirm", { type: "password", required: true, autocomplete: "new-password" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Register")),
  ), async (data) => {
    await api("POST", "/v1/auth/register", data);
    verify.elements.email.value = data.email;
    banner("info", `A code was sent to ${data.email}. Enter it below.`);
    verify.elements.code.focus();
  });
  render(h("h1", {}, "Create an account"), h("div", { class: "card" }, register),
    h("h2", {}, "Verify your email"), h("div", { class: "card" }, verify),
    h("p", {}, h("a", { href: "#/login" }, "Back to log in")));
}

// --- Orders ------------------------------------------------------------------------------------

async function ordersPage(params) {
  document.title = "Orders · Orderflow";
  const query = new URLSearchParams();
  for (const k of ["status", "customer_id", "cursor"]) if (params.get(k)) query.set(k, params.get(k));
  query.set("limit", "20");
  const page = await api("GET", `/v1/orders?${query}`);
  const filters = h("form", { class: "grid", id: "order-filters", role: "search" },
    h("label", {}, "Status", h("select", { name: "status", id: "filter-status" },
      h("option", { value: "" }, "any"),
      STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s.replace("_", " "))))),
    session.admin && field("Customer id", "customer_id", { value: params.get("customer_id") || "", id: "filter-customer" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Filter")),
  );
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(filters).entries()) if (v) q.set(k, v);
    go(`#/orders?${q}`);
  });
  const rows = page.orders.map((o) => h("tr", { class: o.status, dataset: { orderId: o.order_id } },
    h("td", {}, h("a", { href: `#/orders/${encodeURIComponent(o.order_id)}`, class: "mono" }, o.order_id.slice(0, 13) + "…")),
    h("td", {}, badge(o.status)),
    session.admin && h("td", { class: "mono hide-narrow" }, o.customer_id.slice(0, 13)),
    h("td", { class: "num" }, money(o.total_cents, o.currency)),
    h("td", { class: "hide-narrow" }, when(o.created_at)),
  ));
  const next = new URLSearchParams(query);
  next.delete("limit");
  if (page.next_cursor) next.set("cursor", page.next_cursor);
  render(
    h("h1", {}, session.admin ? "All orders" : "My orders"),
    filters,
    h("div", { class: "table-wrap" }, h("table", { id: "orders" },
      h("caption", { class: "muted" }, "Newest first; cancelled orders stay listed."),
      h("thead", {}, h("tr", {}, h("th", {}, "Order"), h("th", {}, "Status"),
        session.admin && h("th", { class: "hide-narrow" }, "Customer"),
        h("th", { class: "num" }, "Total"), h("th", { class: "hide-narrow" }, "Placed"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5 }, "No orders."))))),
    h("div", { class: "actions" },
      params.get("cursor") && h("a", { href: "#/orders", class: "secondary" }, "« Newest"),
      page.next_cursor && h("a", { href: `#/orders?${next}`, id: "older" }, "Older »")),
  );
}

async function newOrderPage() {
  document.title = "New order · Orderflow";
  const catalogue = await api("GET", "/v1/products");
  const products = catalogue.products.filter((p) => !p.discontinued);
  const lines = products.map((p, i) => h("tr", {},
    h("td", {}, p.name, h("div", { class: "muted mono" }, p.sku)),
    h("td", { class: "num" }, money(p.price_cents, p.currency)),
    h("td", { class: "num hide-narrow" }, p.stock),
    h("td", {}, h("input", { type: "number", min: 0, max: 1000, value: 0, name: `qty:${p.sku}`,
      "aria-label": `Quantity of ${p.name}`, dataset: { sku: p.sku } }))));
  const form = h("form", { id: "new-order" },
    h("div", { class: "table-wrap" }, h("table", { dataset: { field: "items" }, tabindex: -1 },
      h("thead", {}, h("tr", {}, h("th", {}, "Product"), h("th", { class: "num" }, "Price"),
        h("th", { class: "num hide-narrow" }, "In stock"), h("th", {}, "Quantity"))),
      h("tbody", {}, lines))),
    h("h2", {}, "Ship to"),
    h("div", { class: "grid form-grid" },
      session.admin && field("For customer (id; empty: yourself)", "customer_id", { id: "order-customer" }),
      field("Name", "name", { field: "shipping_address.name", required: true, autocomplete: "name", value: session.me.name }),
      field("Address", "line1", { field: "shipping_address.line1", required: true, autocomplete: "address-line1" }),
      field("Address line 2", "line2", { field: "shipping_address.line2", autocomplete: "address-line2" }),
      field("City", "city", { field: "shipping_address.city", required: true, autocomplete: "address-level2" }),
      field("Postal code", "postal_code", { field: "shipping_address.postal_code", required: true, autocomplete: "postal-code" }),
      field("Country (2 letters)", "country", { field: "shipping_address.country", required: true, value: "DE", maxlength: 2, autocomplete: "country" })),
    h("h2", {}, "Payment"),
    h("div", { class: "grid form-grid" },
      h("label", {}, "Method", h("select", { name: "method", dataset: { field: "payment.method" }, id: "payment-method" },
        h("option", { value: "card" }, "card"), h("option", { value: "bank_transfer" }, "bank transfer"))),
      field("Card token (test: tok_visa; tok_decline fails)", "token", { field: "payment.token", value: "tok_visa", id: "payment-token" })),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "place-order" }, "Place order")),
  );
  for (const g of form.querySelectorAll(".form-grid")) g.className = "grid";
  form.classList.add("card");
  onSubmit(form, async (data) => {
    const items = [...form.querySelectorAll("input[data-sku]")]
      .map((i) => ({ sku: i.dataset.sku, quantity: Number(i.value) }))
      .filter((i) => i.quantity > 0);
    const body = {
      items,
      shipping_address: { name: data.name, line1: data.line1, city: data.city,
        postal_code: data.postal_code, country: data.country.toUpperCase() },
      payment: { method: data.method, token: data.token || "-" },
    };
    if (data.line2) body.shipping_address.line2 = data.line2;
    if (data.customer_id) body.customer_id = data.customer_id;
    const key = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
    const res = await raw("/v1/orders", { method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key }, body: JSON.stringify(body) });
    const accepted = await res.json();
    go(`#/orders/${encodeURIComponent(accepted.order_id)}`);
  });
  render(h("h1", {}, "New order"), form);
}

function timeline(order) {
  return h("ol", { class: "timeline", id: "timeline", "aria-live": "polite" },
    order.timeline.map((t) => h("li", { class: FAILED.has(t.status) ? "failed" : "", dataset: { status: t.status } },
      badge(t.status), " ", h("span", { class: "muted" }, when(t.at)),
      t.detail && h("div", { class: FAILED.has(t.status) ? "reason" : "muted" }, t.detail))));
}

async function downloadInvoice(order) {
  const res = await raw(`/v1/orders/${encodeURIComponent(order.order_id)}/invoice`);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: `${order.invoice_number}.pdf` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function orderPage(orderId) {
  document.title = "Order · Orderflow";
  const signal = pageAbort.signal;
  let order = await api("GET", `/v1/orders/${encodeURIComponent(orderId)}`);
  const container = h("div", { id: "order" });
  const liveState = h("span", { class: "live off", id: "live-state" }, "connecting…");
  const draw = () => container.replaceChildren(...orderView(order));
  draw();
  render(h("h1", {}, "Order ", h("span", { class: "mono" }, order.order_id), " ", liveState), container);
  follow(`/v1/orders/${encodeURIComponent(orderId)}/events`, (name, data) => {
    if (name !== "order") return;
    // The stream starts with the order as it is: nothing to redraw when nothing changed.
    if (JSON.stringify(data) === JSON.stringify(order)) return;
    // Keep what the person is typing: then only the timeline and the status are redrawn.
    order = data;
    const typing = container.contains(document.activeElement) && document.activeElement.tagName === "INPUT";
    if (typing) { container.querySelector("#timeline")?.replaceWith(timeline(order)); updateHead(); } else draw();
  }, signal, (up) => {
    liveState.textContent = up ? "● live" : "reconnecting…";
    liveState.className = up ? "live" : "live off";
  });
  function updateHead() {
    const status = container.querySelector("#order-status");
    if (status) status.replaceChildren(badge(order.status));
  }
  function orderView(o) {
    const unpaidTransfer = o.status === "validated" && o.payment_method === "bank_transfer";
    const out = [];
    const addr = o.shipping_address;
    out.push(h("div", { class: "card" }, h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { id: "order-status" }, badge(o.status)),
      h("dt", {}, "Customer"), h("dd", { class: "mono" }, o.customer_id),
      h("dt", {}, "Placed"), h("dd", {}, when(o.created_at)),
      h("dt", {}, "Payment"), h("dd", { id: "order-payment" }, o.payment_method || "—"),
      h("dt", {}, "Ship to"), h("dd", { id: "order-address" }, addr
        ? [addr.name, addr.line1, addr.line2, `${addr.postal_code} ${addr.city}`, addr.country].filter(Boolean).join(", ") : "—"),
      h("dt", {}, "Revision"), h("dd", {}, o.revision),
      o.invoice_number && h("dt", {}, "Invoice"),
      o.invoice_number && h("dd", {}, o.invoice_number, " ",
        h("button", { type: "button", class: "secondary", id: "download-invoice",
          onclick: () => downloadInvoice(o).catch(showError) }, "Download PDF")))));
    // Lines: priced ones when validation priced the revision, else the items.
    const priced = o.lines || [];
    const rows = (priced.length ? priced : o.items).map((l, i) => {
      const cells = [h("td", {}, l.name || l.sku, h("div", { class: "muted mono" }, l.sku)),
        h("td", { class: "num" }, l.quantity),
        h("td", { class: "num" }, l.unit_price_cents !== undefined ? money(l.unit_price_cents, o.currency) : "…"),
        h("td", { class: "num" }, l.line_total_cents !== undefined ? money(l.line_total_cents, o.currency) : "…")];
      if (session.admin && unpaidTransfer && priced.length) {
        const f = h("form", { class: "actions price-form", dataset: { sku: l.sku } },
          h("input", { type: "number", min: 0, step: "0.01", name: "price", value: (l.unit_price_cents / 100).toFixed(2),
            "aria-label": `New unit price of ${l.sku}`, dataset: { field: "lines[0].unit_price_cents" } }),
          h("button", { type: "submit", class: "secondary" }, "Set price"));
        onSubmit(f, async (data) => {
          order = await api("POST", `/v1/orders/${encodeURIComponent(o.order_id)}/prices`,
            { lines: [{ sku: l.sku, unit_price_cents: Math.round(Number(data.price) * 100) }] });
          banner("info", `Price of ${l.sku} adjusted; the order is being re-priced.`);
          draw();
        });
        cells.push(h("td", {}, f));
      }
      return h("tr", { dataset: { sku: l.sku, index: i } }, ...cells);
    });
    out.push(h("h2", {}, "Lines"), h("div", { class: "table-wrap" }, h("table", { id: "lines" },
      h("thead", {}, h("tr", {}, h("th", {}, "Item"), h("th", { class: "num" }, "Qty"),
        h("th", { class: "num" }, "Unit price"), h("th", { class: "num" }, "Amount"),
        session.admin && unpaidTransfer && priced.length && h("th", {}, "Adjust price"))),
      h("tbody", {}, rows),
      h("tfoot", {},
        h("tr", {}, h("td", { colspan: 3, class: "num" }, "Subtotal"), h("td", { class: "num", id: "subtotal" }, money(o.subtotal_cents, o.currency))),
        h("tr", {}, h("td", { colspan: 3, class: "num" }, "Tax"), h("td", { class: "num" }, money(o.tax_cents, o.currency))),
        h("tr", {}, h("th", { colspan: 3, class: "num" }, "Total"), h("th", { class: "num", id: "total" }, money(o.total_cents, o.currency)))))));
    // Quantities, while awaiting the transfer.
    if (unpaidTransfer && (session.admin || o.customer_id === session.me.customer_id)) {
      const f = h("form", { class: "card", id: "quantities" }, h("h2", {}, "Change quantities"),
        h("div", { class: "grid" }, o.items.map((it, i) => h("label", {}, it.sku,
          h("input", { type: "number", min: 0, max: 1000, name: it.sku, value: it.quantity, dataset: { field: `items[${i}].quantity` } })))),
        h("div", { class: "actions" }, h("button", { type: "submit" }, "Save quantities")));
      onSubmit(f, async (data) => {
        const items = Object.entries(data).map(([sku, q]) => ({ sku, quantity: Number(q) }));
        order = await api("PATCH", `/v1/orders/${encodeURIComponent(o.order_id)}`, { items });
        draw();
      });
      out.push(f);
    }
    // Staff and owner actions.
    const actions = h("div", { class: "actions", id: "order-actions" });
    if (session.admin && ["paid", "invoiced"].includes(o.status)) {
      actions.append(h("button", { type: "button", id: "ship", onclick: async () => {
        try { order = await api("POST", `/v1/orders/${encodeURIComponent(o.order_id)}/ship`); draw(); } catch (e) { showError(e); }
      } }, "Mark shipped"));
    }
    if (session.admin && unpaidTransfer && o.total_cents !== undefined) {
      const f = h("form", { class: "actions", id: "record-payment" },
        h("input", { name: "reference", placeholder: "transfer reference", "aria-label": "Transfer reference", dataset: { field: "reference" } }),
        h("button", { type: "submit", class: "secondary" }, "Record transfer"));
      onSubmit(f, async (data) => {
        order = await api("POST", `/v1/orders/${encodeURIComponent(o.order_id)}/payment`, data);
        draw();
      });
      actions.append(f);
    }
    if (!["shipped", "cancelled"].includes(o.status)) {
      actions.append(h("button", { type: "button", class: "danger", id: "cancel", onclick: async () => {
        if (!confirm("Cancel this order? It stays listed, marked cancelled.")) return;
        try { order = await api("DELETE", `/v1/orders/${encodeURIComponent(o.order_id)}`); draw(); } catch (e) { showError(e); }
      } }, "Cancel order"));
    }
    if (actions.childElementCount) out.push(actions);
    out.push(h("h2", {}, "Timeline"), timeline(o));
    return out;
  }
}

// --- Catalogue (admin) -------------------------------------------------------------------------

async function productsPage() {
  document.title = "Products · Orderflow";
  const catalogue = await api("GET", "/v1/products");
  const rows = catalogue.products.map((p) => {
    const edit = h("form", { class: "actions" },
      h("input", { name: "name", value: p.name, "aria-label": `Name of ${p.sku}`, dataset: { field: "name" } }),
      h("input", { name: "price", type: "number", step: "0.01", min: 0, value: (p.price_cents / 100).toFixed(2),
        "aria-label": `Price of ${p.sku}`, dataset: { field: "price_cents" } }),
      h("button", { type: "submit", class: "secondary" }, "Save"));
    onSubmit(edit, async (d) => {
      await api("PATCH", `/v1/products/${encodeURIComponent(p.sku)}`, { name: d.name, price_cents: Math.round(Number(d.price) * 100) });
      banner("info", `${p.sku} saved.`);
    });
    const stock = h("form", { class: "actions" },
      h("input", { name: "delta", type: "number", value: 0, "aria-label": `Stock change of ${p.sku}`, dataset: { field: "delta" } }),
      h("button", { type: "submit", class: "secondary" }, "Adjust stock"));
    onSubmit(stock, async (d) => {
      await api("POST", `/v1/products/${encodeURIComponent(p.sku)}/stock`, { delta: Number(d.delta) });
      route();
    });
    return h("tr", { class: p.discontinued ? "cancelled" : "" },
      h("td", { class: "mono" }, p.sku), h("td", {}, edit), h("td", { class: "num" }, p.stock, h("div", {}, stock)),
      h("td", {}, p.discontinued ? "discontinued" : h("button", { type: "button", class: "danger", onclick: async () => {
        try { await api("DELETE", `/v1/products/${encodeURIComponent(p.sku)}`); route(); } catch (e) { showError(e); }
      } }, "Discontinue")));
  });
  const create = onSubmit(h("form", { class: "grid card", id: "new-product" },
    field("SKU", "sku", { required: true }), field("Name", "name", { required: true }),
    field("Price (cents)", "price_cents", { type: "number", min: 0, required: true }),
    field("Currency", "currency", { value: "EUR", required: true }),
    field("Stock", "stock", { type: "number", min: 0, value: 0 }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Add product"))),
  async (d) => {
    await api("POST", "/v1/products", { sku: d.sku, name: d.name, price_cents: Number(d.price_cents), currency: d.currency, stock: Number(d.stock) });
    route();
  });
  render(h("h1", {}, "Products"), h("div", { class: "table-wrap" }, h("table", { id: "products" },
    h("thead", {}, h("tr", {}, h("th", {}, "SKU"), h("th", {}, "Name and price"), h("th", { class: "num" }, "Stock"), h("th", {}, ""))),
    h("tbody", {}, rows))), h("h2", {}, "New product"), create);
}

async function customersPage(params) {
  document.title = "Customers · Orderflow";
  const q = new URLSearchParams({ limit: "50" });
  if (params.get("after")) q.set("after", params.get("after"));
  const page = await api("GET", `/v1/customers?${q}`);
  render(h("h1", {}, "Customers"), h("div", { class: "table-wrap" }, h("table", { id: "customers" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Email"), h("th", {}, "Role"), h("th", { class: "hide-narrow" }, "Since"), h("th", {}, ""))),
    h("tbody", {}, page.customers.map((c) => h("tr", { class: c.disabled ? "cancelled" : "" },
      h("td", {}, c.name), h("td", {}, c.email), h("td", {}, c.role, c.verified ? "" : " (unverified)"),
      h("td", { class: "hide-narrow" }, when(c.created_at)),
      h("td", {}, h("a", { href: `#/orders?customer_id=${encodeURIComponent(c.customer_id)}` }, "Orders"))))))),
  page.next && h("div", { class: "actions" }, h("a", { href: `#/customers?after=${encodeURIComponent(page.next)}` }, "More »")));
}

// --- Pipeline (admin) --------------------------------------------------------------------------

function pipelinePage() {
  document.title = "Pipeline · Orderflow";
  const body = h("div", { id: "pipeline" }, h("p", { class: "muted" }, "Waiting for the first summary…"));
  const state = h("span", { class: "live off" }, "connecting…");
  render(h("h1", {}, "Pipeline ", state), body);
  const kpi = (label, value, id) => h("div", { class: "kpi", id }, h("div", { class: "muted" }, label), h("div", { class: "value" }, value));
  const table = (id, head, rows) => h("div", { class: "table-wrap" }, h("table", { id },
    h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: i ? "num" : "" }, c))))
      : h("tr", {}, h("td", { colspan: head.length, class: "muted" }, "nothing yet")))));
  follow("/v1/pipeline/events", (name, s) => {
    if (name !== "summary") return;
    const e2e = s.latency.invoiced;
    const dead = Object.values(s.dead_lettered).reduce((a, b) => a + b, 0);
    const backlog = s.backlog.bridge ?? 0;
    body.replaceChildren(
      h("div", { class: "kpis" },
        kpi("Accepted / s", (s.orders_per_second.accepted ?? 0).toFixed(1), "kpi-accepted"),
        kpi("Invoiced / s", (s.orders_per_second.invoiced ?? 0).toFixed(1), "kpi-invoiced"),
        kpi("End to end (mean)", e2e ? `${(e2e.mean_seconds * 1000).toFixed(0)} ms` : "—", "kpi-latency"),
        kpi("Dead-lettered", dead, "kpi-dead"),
        kpi("Sink backlog", backlog, "kpi-backlog")),
      h("h2", {}, "Orders by status"),
      table("by-status", ["Status", "Total", "Per second", "Latency mean", "p95"],
        STATUSES.filter((st) => s.orders[st] !== undefined).map((st) => [badge(st), s.orders[st],
          (s.orders_per_second[st] ?? 0).toFixed(2),
          s.latency[st] ? `${(s.latency[st].mean_seconds * 1000).toFixed(0)} ms` : "—",
          s.latency[st] ? `≤ ${(s.latency[st].p95_seconds * 1000).toFixed(0)} ms` : "—"])),
      h("h2", {}, "Stages"),
      table("stages", ["Stage", "Dead-lettered", "Backlog", "In flight"],
        [...new Set([...Object.keys(s.dead_lettered), ...Object.keys(s.backlog), ...Object.keys(s.in_flight)])].sort()
          .map((st) => [st, s.dead_lettered[st] ?? 0, s.backlog[st] ?? 0, s.in_flight[st] ?? 0])),
      h("h2", {}, "Sinks"),
      table("sinks", ["Sink", "Sent", "Duplicates skipped", "Failed"],
        Object.entries(s.sinks).map(([sink, o]) => [sink, o.sent ?? 0, o.skipped_duplicate ?? 0, o.failed ?? 0])),
      h("p", { class: "muted" }, `As of ${when(s.at)}.`));
  }, pageAbort.signal, (up) => { state.textContent = up ? "● live" : "reconnecting…"; state.className = up ? "live" : "live off"; });
}

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (ev) => showError(ev.reason));
route();
