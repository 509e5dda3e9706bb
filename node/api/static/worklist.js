// The worklist page: reads /api/studies with the page's own credentials (Basic or session cookie),
// renders with textContent only (nothing from the index is ever parsed as HTML), refreshes on a timer.
"use strict";

const ACTION_HEADER = "X-AINode-Action";
let me = null;
let timer = null;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function formatAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function setMessage(text, isError) {
  const m = document.getElementById("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function act(url, what) {
  const r = await fetch(url, { method: "POST", headers: { [ACTION_HEADER]: "1" }, credentials: "same-origin" });
  const body = await r.json().catch(() => ({}));
  if (r.ok) setMessage(`${what}: accepted`, false);
  else setMessage(`${what}: refused (${r.status}) ${body.detail || ""}`, true);
  await load();
}

function row(study) {
  const tr = el("tr", { className: study.flagged ? "flagged" : "" });
  tr.dataset.studyUid = study.study_uid;
  tr.dataset.status = study.status;
  tr.append(el("td", {}, study.flagged ? el("span", { className: "flag", title: "highest malignancy probability at or above the threshold", textContent: "PRIORITY" }) : ""));
  tr.append(el("td", { textContent: new Date(study.last_received_at * 1000).toLocaleString() }));
  const who = study.patient_name !== undefined ? `${study.patient_name} (${study.patient_id})` : "";
  tr.append(el("td", { className: "identity patient", textContent: who }));
  tr.append(
    el("td", {},
      el("div", { textContent: study.study_description || "(no description)" }),
      el("div", { className: "uid", textContent: study.study_uid }),
      el("div", { className: "uid", textContent: `${study.modalities.join("/")} · ${study.series_count} series · ${study.instance_count} images · ${study.pipelines.join(", ")}` }))
  );
  tr.append(el("td", {}, el("span", { className: `status status-${study.status}`, textContent: study.status.replace("_", " ") })));
  tr.append(el("td", { className: "nodules", textContent: study.nodule_count === null ? "—" : String(study.nodule_count) }));
  const p = study.max_malignancy_probability;
  tr.append(el("td", { className: "probability", textContent: p === null ? "—" : `${(p * 100).toFixed(0)} %` }));
  tr.append(el("td", { textContent: formatAge(study.time_to_result_s) }));
  const failures = el("td", {});
  for (const w of study.waiting_for || []) {
    const at = new Date(w.since * 1000);  // HH:MM, the viewer's local time, 24 h whatever the locale
    const since = `${String(at.getHours()).padStart(2, "0")}:${String(at.getMinutes()).padStart(2, "0")}`;
    failures.append(el("div", { className: "waiting", title: w.reason, textContent: `waiting for PACS ${w.destination} since ${since}` }));
  }
  for (const f of study.failures) {
    const what = f.kind === "job" ? `job ${f.job_id} (${f.pipeline})` : `delivery ${f.delivery_id} to ${f.destination}`;
    failures.append(el("div", { className: "failure", textContent: `${what}: ${f.reason}` }));
  }
  tr.append(failures);
  const link = el("a", { className: "viewer-link", textContent: "Open in viewer", target: "_blank", rel: "noopener" });
  link.href = study.viewer_url;
  tr.append(el("td", {}, link));
  const actions = el("td", { className: "operator" });
  const rerun = el("button", { type: "button", className: "rerun", textContent: "Re-run" });
  rerun.addEventListener("click", () => act(`/api/studies/${encodeURIComponent(study.study_uid)}/rerun`, "Re-run"));
  actions.append(rerun);
  for (const f of study.failures) {
    if (f.kind !== "delivery") continue;
    const retry = el("button", { type: "button", className: "retry", textContent: `Retry delivery ${f.delivery_id}` });
    retry.addEventListener("click", () => act(`/api/deliveries/${f.delivery_id}/retry`, `Retry delivery ${f.delivery_id}`));
    actions.append(retry);
  }
  tr.append(actions);
  return tr;
}

async function load() {
  const params = new URLSearchParams({ limit: "200" });
  const status = document.getElementById("filter-status").value;
  if (status) params.set("status", status);
  if (document.getElementById("filter-flagged").checked) params.set("flagged", "true");
  try {
    const r = await fetch(`/api/studies?${params}`, { credentials: "same-origin" });
    if (!r.ok) throw new Error(`the node answered ${r.status}`);
    const data = await r.json();
    const tbody = document.querySelector("#worklist tbody");
    tbody.replaceChildren(...data.items.map(row));
    document.getElementById("empty").hidden = data.items.length > 0;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()} · ${data.total} studies`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    setMessage(`Could not load the worklist: ${e.message}`, true);
  }
}

function schedule() {
  clearInterval(timer);
  if (document.getElementById("auto-refresh").checked) {
    timer = setInterval(load, (me ? me.refresh_interval_s : 15) * 1000);
  }
}

async function init() {
  const r = await fetch("/api/me", { credentials: "same-origin" });
  if (r.ok) {
    me = await r.json();
    document.getElementById("who").textContent = `${me.name} (${me.role})`;
    document.getElementById("refresh-s").textContent = String(me.refresh_interval_s);
    document.body.classList.toggle("can-act", me.can_act);
    document.body.classList.toggle("show-identity", me.show_patient_identity);
  }
  for (const id of ["filter-status", "filter-flagged"]) document.getElementById(id).addEventListener("change", load);
  document.getElementById("auto-refresh").addEventListener("change", schedule);
  document.getElementById("refresh-now").addEventListener("click", load);
  await load();
  schedule();
}

init();
