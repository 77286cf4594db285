"use strict";
// The page's data comes from /api/* (ipamd's Admin API, through ipamctl),
// reloaded every data-refresh seconds; its view (search, page, selected
// pool) is the URL's query, so links and reloads show the same view.
// Text goes in with textContent only: names never become markup.
(() => {
  const body = document.body;
  const refreshMs = Math.max(1, Number(body.dataset.refresh) || 5) * 1000;
  // A request that takes this long is reported, and the next refresh tries
  // again.
  const timeoutMs = Math.max(30000, 2 * refreshMs);
  const params = new URLSearchParams(location.search);
  const positive = (s) => {
    const n = parseInt(s, 10);
    return n >= 1 ? n : 1;
  };
  const view = {
    q: (params.get("q") || "").trim(),
    page: positive(params.get("page")),
    pool: params.get("pool") || "",
    ippage: positive(params.get("ippage")),
  };
  let loads = 0;
  let lastGood = null;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Element ? c : String(c));
    }
    return e;
  }

  // The URL of this view with `changes` applied.
  function href(changes) {
    const next = Object.assign({}, view, changes);
    const p = new URLSearchParams();
    if (next.q) p.set("q", next.q);
    if (next.page > 1) p.set("page", next.page);
    if (next.pool) p.set("pool", next.pool);
    if (next.pool && next.ippage > 1) p.set("ippage", next.ippage);
    const s = p.toString();
    return s ? "/?" + s : "/";
  }

  function bar(c) {
    const b = el("div", {
      class: "bar",
      title: `${c.in_use} in use, ${c.bound} bound, ${c.free} free of ${c.total}`,
    });
    for (const k of ["in_use", "bound", "free"]) {
      const seg = el("span", { class: "seg " + k.replace("_", "-") });
      seg.style.width = c.total ? ((100 * c[k]) / c.total).toFixed(2) + "%" : "0";
      b.append(seg);
    }
    return b;
  }

  // The count cells every ToR and pool row has, in the header's order.
  function counts(c) {
    return [
      el("td", { class: "total" }, c.total),
      el("td", { class: "free" }, c.free),
      el("td", { class: "bound" }, c.bound),
      el("td", { class: "in-use" }, c.in_use),
      el("td", { class: "usage" }, bar(c)),
    ];
  }

  function empty(columns, text) {
    return el("tr", { class: "empty" }, el("td", { colspan: columns }, text));
  }

  function ago(now, then) {
    if (!then) return "never";
    const s = Math.max(0, now - then);
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }

  function renderOverview(ov) {
    const alive = ov.nodes.filter((n) => n.alive).length;
    const t = ov.totals;
    document.getElementById("summary").textContent =
      `${ov.tors.length} ToRs · ${ov.pools} pools · ${t.total} IPs: ` +
      `${t.in_use} in use, ${t.bound} bound, ${t.free} free · ` +
      `${alive} of ${ov.nodes.length} nodes alive`;

    const tors = ov.tors.map((tor) =>
      el(
        "tr",
        { "data-tor": tor.name },
        el(
          "td",
          { class: "name" },
          el("b", null, tor.name),
          el(
            "div",
            { class: "sub" },
            [
              tor.subnet || "not listed by ipamd",
              tor.subnet6,
              tor.subnet ? (tor.vlan ? `VLAN ${tor.vlan}` : "untagged") : null,
              tor.segment_of ? `segment of ${tor.segment_of}` : null,
            ]
              .filter(Boolean)
              .join(" · "),
          ),
        ),
        el("td", { class: "pools" }, tor.pools),
        ...counts(tor),
        el("td", { class: "carved" }, `${tor.carved} of ${tor.capacity}`),
      ),
    );
    if (!tors.length) tors.push(empty(8, "No ToRs yet: add one with ipamctl tor add."));
    document.querySelector("#tors tbody").replaceChildren(...tors);

    document.getElementById("node-count").textContent = `${alive} of ${ov.nodes.length} alive`;
    const nodes = ov.nodes.map((n) =>
      el(
        "tr",
        { "data-node": n.name, "data-alive": n.alive },
        el("td", { class: "name" }, n.name),
        el("td", { class: "tor" }, n.tor),
        el("td", { class: "mode" }, n.mode),
        el("td", { class: "alive" }, n.alive ? "yes" : "no"),
        el("td", { class: "heartbeat" }, ago(ov.now_unix, n.heartbeat_unix)),
      ),
    );
    if (!nodes.length) nodes.push(empty(5, "No node has registered: is ipamd running on the nodes?"));
    document.querySelector("#nodes tbody").replaceChildren(...nodes);
  }

  function renderPager(nav, info, key) {
    nav.dataset.page = info.page;
    nav.dataset.pages = info.pages;
    const link = (label, n, cls) =>
      n >= 1 && n <= info.pages && n !== info.page
        ? el("a", { class: cls, href: href({ [key]: n }) }, label)
        : el("span", { class: cls + " off" }, label);
    nav.replaceChildren(
      link("« first", 1, "first"),
      link("‹ previous", info.page - 1, "prev"),
      el("span", { class: "where" }, `page ${info.page} of ${info.pages}`),
      link("next ›", info.page + 1, "next"),
      link("last »", info.pages, "last"),
    );
  }

  function renderPools(pp) {
    const count = document.getElementById("pool-count");
    count.dataset.total = pp.total;
    count.dataset.matching = pp.matching;
    count.textContent = pp.q
      ? `${pp.matching} of ${pp.total} match “${pp.q}”`
      : `${pp.total}`;
    const rows = [];
    for (const p of pp.pools) {
      rows.push(
        el(
          "tr",
          { class: p.name === view.pool ? "pool selected" : "pool", "data-pool": p.name },
          el(
            "td",
            { class: "name" },
            el("a", { href: href({ pool: p.name, ippage: 1 }) }, p.name),
            el("div", { class: "sub" }, `${p.namespace} / ${p.app} · ${p.policy} · ${p.family} · size ${p.size}`),
          ),
          ...counts(p.totals),
        ),
      );
      for (const t of p.tors) {
        rows.push(
          el(
            "tr",
            { class: "pool-tor", "data-pool": p.name, "data-tor": t.tor },
            el("td", { class: "name" }, t.tor),
            ...counts(t),
          ),
        );
      }
    }
    if (!rows.length) {
      rows.push(empty(6, pp.q ? `No pool matches “${pp.q}”.` : "No pools yet: ipamctl pool create."));
    }
    document.querySelector("#pools tbody").replaceChildren(...rows);
    renderPager(document.getElementById("pools-pager-top"), pp, "page");
    renderPager(document.getElementById("pools-pager"), pp, "page");
  }

  function renderIps(settled) {
    const shown = (id, yes) => {
      document.getElementById(id).hidden = !yes;
    };
    shown("ips-hint", !view.pool);
    for (const id of ["ips-of", "ips-close"]) shown(id, !!view.pool);
    if (!view.pool) return;
    document.getElementById("ips-pool").textContent = view.pool;
    const failed = settled.status === "rejected";
    // A pool deleted while shown says so here; the rest of the page lives on.
    shown("ips-error", failed);
    for (const id of ["ips", "ips-pager", "ips-count"]) shown(id, !failed);
    if (failed) {
      document.getElementById("ips-error").textContent = settled.reason.message;
      return;
    }
    const page = settled.value;
    document.getElementById("ips-count").textContent = `${page.matching} IPs`;
    const rows = page.ips.map((ip) => {
      const a = ip.attachment;
      const pod = ip.binding || (a && a.pod);
      return el(
        "tr",
        { "data-ip": ip.address, "data-state": ip.state },
        el("td", { class: "address" }, ip.address, ip.address6 ? el("div", { class: "sub" }, ip.address6) : null),
        el("td", { class: "tor" }, ip.tor),
        el("td", { class: "state" }, ip.state),
        el("td", { class: "pod" }, pod ? (pod.namespace ? `${pod.namespace}/${pod.name}` : pod.name) : ""),
        el("td", { class: "node" }, a ? a.node : ""),
      );
    });
    if (!rows.length) rows.push(empty(5, "The pool has no IPs."));
    document.querySelector("#ips tbody").replaceChildren(...rows);
    renderPager(document.getElementById("ips-pager"), page, "ippage");
  }

  async function getJSON(url) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    try {
      const r = await fetch(url, { cache: "no-store", signal: abort.signal });
      let j = null;
      try {
        j = await r.json();
      } catch (_) {
        // Not JSON: said below by its status.
      }
      if (!r.ok) throw new Error((j && j.error) || `${url}: HTTP ${r.status}`);
      return j;
    } catch (e) {
      if (e.name === "AbortError") throw new Error(`${url}: no answer in ${timeoutMs / 1000} s`);
      if (e instanceof TypeError) throw new Error(`ipamctl ui does not answer (${e.message}): is it still running?`);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  async function load() {
    const pools = new URLSearchParams();
    if (view.q) pools.set("q", view.q);
    pools.set("page", view.page);
    const ips = view.pool
      ? getJSON(`/api/pools/${encodeURIComponent(view.pool)}/ips?page=${view.ippage}`)
      : Promise.resolve(null);
    const [ov, pp, ipsPage] = await Promise.allSettled([
      getJSON("/api/overview"),
      getJSON("/api/pools?" + pools),
      ips,
    ]);
    if (ov.status === "fulfilled") renderOverview(ov.value);
    if (pp.status === "fulfilled") renderPools(pp.value);
    renderIps(ipsPage);
    const failed = [ov, pp].find((r) => r.status === "rejected");
    const banner = document.getElementById("error");
    if (failed) {
      const shown = lastGood ? `showing the data of ${lastGood.toLocaleTimeString()}` : "no data yet";
      banner.textContent = `${failed.reason.message} (${shown}; trying again every ${refreshMs / 1000} s)`;
      banner.hidden = false;
      body.dataset.state = "error";
    } else {
      banner.hidden = true;
      body.dataset.state = "ok";
      lastGood = new Date();
    }
  }

  async function refresh() {
    try {
      await load();
    } catch (e) {
      // A bug in rendering must not stop the refreshes.
      const banner = document.getElementById("error");
      banner.textContent = `the page failed: ${e}`;
      banner.hidden = false;
      body.dataset.state = "error";
    }
    loads += 1;
    body.dataset.loads = loads;
    document.getElementById("updated").textContent =
      `${lastGood ? "updated " + lastGood.toLocaleTimeString() : "not loaded"} · every ${refreshMs / 1000} s`;
    setTimeout(refresh, refreshMs);
  }

  const search = document.querySelector("#search input");
  search.value = view.q;
  document.getElementById("clear").hidden = !view.q;
  document.getElementById("ips-close").href = href({ pool: "", ippage: 1 });
  refresh();
})();
