"use strict";
// The kiosk page: follows the terminal's view (/events, server-sent; /view once at start)
// and shows one screen at a time. No build step, nothing fetched from outside.
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  // simple line icons (24x24, drawn in the text's colour): a shape for each hint and result
  const P = {
    person: '<circle cx="12" cy="7.5" r="3.5"/><path d="M5 21c0-4 3-7 7-7s7 3 7 7"/>',
    camera: '<rect x="3" y="7" width="18" height="13" rx="2"/><circle cx="12" cy="13.5" r="3.5"/><path d="M8 7l1.5-3h5L16 7"/>',
    closer: '<path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5"/><path d="M9 9l-5-5M15 9l5-5M9 15l-5 5M15 15l5 5"/>',
    back: '<path d="M9 4v5H4M15 4v5h5M9 20v-5H4M15 20v-5h5"/><path d="M9 9L4 4M15 9l5-5M9 15l-5 5M15 15l5 5"/>',
    sun: '<circle cx="12" cy="12" r="4"/><path d="M12 2v3M12 19v3M2 12h3M19 12h3M4.9 4.9l2.1 2.1M17 17l2.1 2.1M4.9 19.1L7 17M17 7l2.1-2.1"/>',
    shade: '<circle cx="12" cy="12" r="8"/><path d="M12 4a8 8 0 0 1 0 16z" fill="currentColor"/>',
    target: '<circle cx="12" cy="12" r="8"/><circle cx="12" cy="12" r="2.5"/><path d="M12 1v4M12 19v4M1 12h4M19 12h4"/>',
    still: '<path d="M9 5v14M15 5v14"/>',
    eye: '<path d="M2 12c3-5 6.5-7 10-7s7 2 10 7c-3 5-6.5 7-10 7s-7-2-10-7z"/><circle cx="12" cy="12" r="3"/>',
    left: '<path d="M20 12H5M11 5l-7 7 7 7"/>',
    right: '<path d="M4 12h15M13 5l7 7-7 7"/>',
    check: '<path d="M5 12.5l4.5 4.5L19 7"/>',
    retry: '<path d="M19 12a7 7 0 1 1-2.1-5"/><path d="M19 3v5h-5"/>',
    alert: '<path d="M12 6v8M12 17.5v.5"/>',
    dots: '<path d="M6 12h.01M12 12h.01M18 12h.01"/>',
  };
  const ICONS = {
    one_face_only: P.person, look_at_camera: P.camera, move_closer: P.closer, move_back: P.back, more_light: P.sun,
    less_light: P.shade, center_face: P.target, hold_still: P.still, blink: P.eye, turn_left: P.left,
    turn_right: P.right, waiting_face: P.camera,
  };
  const svg = (inner) => inner ? '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" ' +
    'stroke-linecap="round" stroke-linejoin="round">' + inner + "</svg>" : "";
  const setIcon = (el, inner) => { if (el.dataset.icon !== inner) { el.dataset.icon = inner; el.innerHTML = svg(inner); } };
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
    const at = { cx: (r.left + r.width / 2) / W, cy: (r.top + r.height / 2) / H, rx: r.width / 2 / W, ry: r.height / 2 / H };
    for (const k in at) {  // touched only when it moved: a changed mask is drawn again, a costly layer
      const val = String(Math.round(at[k] * 10000) / 100);
      if (e.getAttribute(k) !== val) e.setAttribute(k, val);
    }
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
      setIcon($("icon"), ICONS[v.hint || "waiting_face"]);
      const pct = Math.round((v.progress || 0) * 100);
      $("progress-fill").style.transform = "scaleX(" + pct / 100 + ")";  // composited: no layout per frame
      $("progress").setAttribute("aria-valuenow", String(pct));
      const left = v.step ? v.step_seconds_left : v.seconds_left;
      setText($("countdown"), left == null ? "" : t("seconds", v, { n: Math.ceil(left) }));
      $("countdown").classList.toggle("low", left != null && left < 4);
      seen += ":" + (v.hint || "waiting_face");
    } else {
      let icon = "", head = "", sub = "";
      if (v.screen === "idle") { icon = P.camera; head = t("idle", v); sub = t("idle_sub", v); }
      else if (v.screen === "deciding") { icon = ""; head = t("deciding", v); }
      else if (v.screen === "result" && v.result) {
        icon = v.result.passed ? P.check : v.result.headline === "result.error" ? P.alert : P.retry;
        head = t(v.result.headline, v); sub = t(v.result.reason, v);
        seen += ":" + (v.result.passed ? "passed" : "retry") + ":" + v.result.reason;
      } else if (v.screen === "offline") { icon = P.dots; head = t("offline", v); }
      else { icon = P.dots; head = t("starting", v); }
      setIcon($("panel-icon"), icon); setText($("headline"), head); setText($("sub"), sub);
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
