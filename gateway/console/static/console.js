// meshgw console: refreshes the server-rendered fragments, runs the countdowns and answers the intention form
// without leaving the page. No framework, no build step; everything is served by the admin port itself.
"use strict";

function duration(seconds) {
  let s = Math.floor(Math.abs(seconds));
  const sign = seconds < 0 ? "-" : "";
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const parts = [];
  if (d) parts.push(d + "d");
  if (d || h) parts.push(h + "h");
  if (d || h || m) parts.push(m + "m");
  parts.push(s + "s");
  return sign + parts.join(" ");
}

function tick() {
  const now = Date.now() / 1000;
  for (const el of document.querySelectorAll("[data-until]")) {
    el.textContent = duration(parseFloat(el.dataset.until) - now);
  }
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = duration(now - parseFloat(el.dataset.since));
  }
}

async function refresh(el) {
  try {
    const r = await fetch(el.dataset.refresh, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (r.ok) {
      el.innerHTML = await r.text();
      const stamp = document.getElementById("refreshed");
      if (stamp) stamp.textContent = "refreshed " + new Date().toLocaleTimeString();
    }
  } catch (e) {
    // The proxy may be restarting: keep the last view and try again at the next tick.
  }
}

function showCheck(result, answer) {
  result.replaceChildren();
  const p = document.createElement("p");
  if (answer.error) {
    p.className = "bad error";
    p.textContent = answer.error;
  } else {
    p.className = (answer.allowed ? "ok" : "bad") + " decision";
    p.dataset.decision = answer.decision;
    const b = document.createElement("b");
    b.textContent = answer.allowed ? "Allowed" : "Denied";
    p.append(b, `: ${answer.source} => ${answer.destination} (${answer.kind}): ${answer.reason}`);
  }
  result.append(p);
}

function wireCheckForm() {
  const form = document.getElementById("check-form");
  const result = document.getElementById("check-result");
  if (!form || !result) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams(new FormData(form));
    try {
      const r = await fetch("/console/check?" + q.toString(), { headers: { Accept: "application/json" } });
      showCheck(result, await r.json());
    } catch (e) {
      showCheck(result, { error: "the admin port did not answer" });
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    setInterval(() => refresh(el), parseInt(el.dataset.every || "3000", 10));
  }
  setInterval(tick, 1000);
  wireCheckForm();
});
