"use strict";
// The kiosk page: follows the terminal's view (/events, server-sent; /view once at start)
// and shows one screen at a time. No build step, nothing fetched from outside.
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const ICONS = {
    one_face_only: "1", look_at_camera: "◎", move_closer: "+", move_back: "−", more_light: "☀",
    less_light: "◐", center_face: "⊙", hold_still: "●", blink: "◉", turn_left: "←", turn_right: "→",
  };
  const FIX = new Set(["one_face_only", "look_at_camera", "move_closer", "move_back", "more_light", "less_light",
                       "center_face"]);
  const STEPS = new Set(["blink", "turn_left", "turn_right"]);
  const log = [];  // what was shown, in order: read by the browser tests
  window.facegate = { log, view: null };
  let strings = { en: {} }, boot = null, lastSeen = "";

  const lang = (v) => params.get("lang") || (v && v.language) || "en";
  const t = (key, v, vars) => {
    const s = ((strings[lang(v)] || {})[key]) || (strings.en[key]) || key;
    return s.replace(/\{(\w+)\}/g, (_, k) => (vars && k in vars ? vars[k] : ""));
  };
  const setText = (el, s) => { if (el.textContent !== s) el.textContent = s; };  // aria-live speaks changes only

  function placeHole() {  // the SVG shade's hole follows the CSS oval
    const r = $("oval").getBoundingClientRect(), W = innerWidth, H = innerHeight, e = $("hole-oval");
    e.setAttribute("cx", ((r.left + r.width / 2) / W) * 100);
    e.setAttribute("cy", ((r.top + r.height / 2) / H) * 100);
    e.setAttribute("rx", (r.width / 2 / W) * 100);
    e.setAttribute("ry", (r.height / 2 / H) * 100);
  }

  function startPreview() {
    $("preview").src = "/preview.mjpg?" + Date.now();
  }

  function render(v) {
    window.facegate.view = v;
    const L = lang(v), body = document.body;
    document.documentElement.lang = L === "zh" ? "zh-Hans" : "en";
    document.title = t("title", v);
    body.dataset.screen = v.screen;
    body.dataset.hint = v.screen === "session" ? (v.hint || "") : "";
    body.dataset.result = v.screen === "result" && v.result ? (v.result.passed ? "passed" : "retry") : "";
    body.dataset.tone = !v.hint ? "" : FIX.has(v.hint) ? "fix" : STEPS.has(v.hint) ? "step" : "good";
    let seen = v.screen;
    if (v.screen === "session") {
      const key = v.hint_key || "waiting_face";
      setText($("hint"), t(key, v));
      setText($("icon"), ICONS[v.hint] || ICONS.look_at_camera);
      const pct = Math.round((v.progress || 0) * 100);
      $("progress-fill").style.width = pct + "%";
      $("progress").setAttribute("aria-valuenow", String(pct));
      const left = v.step ? v.step_seconds_left : v.seconds_left;
      setText($("countdown"), left == null ? "" : t("seconds", v, { n: Math.ceil(left) }));
      $("countdown").classList.toggle("low", left != null && left < 4);
      seen += ":" + (v.hint || "waiting_face");
    } else {
      let icon = "", head = "", sub = "";
      if (v.screen === "idle") { icon = "◎"; head = t("idle", v); sub = t("idle_sub", v); }
      else if (v.screen === "deciding") { icon = ""; head = t("deciding", v); }
      else if (v.screen === "result" && v.result) {
        icon = v.result.passed ? "✓" : "↻"; head = t(v.result.headline, v); sub = t(v.result.reason, v);
        seen += ":" + (v.result.passed ? "passed" : "retry") + ":" + v.result.reason;
      } else if (v.screen === "offline") { icon = "…"; head = t("offline", v); }
      else { icon = "…"; head = t("starting", v); }
      setText($("panel-icon"), icon); setText($("headline"), head); setText($("sub"), sub);
    }
    if (seen !== lastSeen) { lastSeen = seen; log.push(seen); }
    placeHole();
  }

  function follow() {
    let offlineTimer = null;
    const es = new EventSource("/events");
    es.onmessage = (m) => {
      clearTimeout(offlineTimer); offlineTimer = null;
      const v = JSON.parse(m.data);
      if (v.boot !== boot) { boot = v.boot; startPreview(); }  // a restarted daemon: a new stream
      render(v);
    };
    es.onerror = () => {  // the daemon went away: EventSource reconnects by itself (retry 1 s)
      if (!offlineTimer) offlineTimer = setTimeout(() => render({ ...(window.facegate.view || {}), screen: "offline" }), 2000);
    };
  }

  $("preview").addEventListener("error", () => setTimeout(startPreview, 1000));
  addEventListener("resize", placeHole);
  fetch("/static/strings.json").then((r) => r.json()).then((s) => { strings = s; })
    .catch(() => {}).finally(() => {
      render({ screen: "starting", language: lang(null) });
      follow();
    });
})();
