/*! supportbot web chat widget — plain ES2020, no dependencies, no build step.
 * Wire protocol: docs/web-protocol.md. Embed:
 *   <script>window.Supportbot=window.Supportbot||function(){(Supportbot.q=Supportbot.q||[]).push(arguments)};
 *     Supportbot('boot',{user:{token:'<JWT your backend signed: sub, email, name, exp>'}});</script>
 *   <script async src="https://support.example.com/widget.js" data-title="Acme support"></script>
 * Commands: boot(opts), open, close, identify(user), shutdown, on(event, fn), off(event, fn).
 * Everything lives in one shadow root; the only global is window.Supportbot.
 */
(function () {
  'use strict';
  if (window.Supportbot && window.Supportbot.__supportbot) return; // loaded twice: keep the first

  // The server is the origin this script came from.
  const SCRIPT = document.currentScript ||
    [...document.querySelectorAll('script[src]')].reverse().find((s) => /\/widget\.js([?#]|$)/.test(s.src));
  const BASE = new URL(SCRIPT ? SCRIPT.src : location.href).origin;
  const WS_URL = BASE.replace(/^http/, 'ws') + '/widget/ws';
  const STORE_KEY = 'supportbot:' + BASE;
  const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];
  const DEFAULTS = { title: 'Support', color: '#0b6e4f', position: 'right', greeting: null,
    max_message_chars: 4000, max_image_bytes: 5242880, max_images: 3 };
  const listeners = { ready: [], open: [], close: [], message: [], handoff: [] };

  // --- helpers ---
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    el.append(...kids.filter((x) => x != null));
    return el;
  }
  const ICONS = {
    chat: 'M20 2H4a2 2 0 0 0-2 2v18l4-4h14a2 2 0 0 0 2-2V4a2 2 0 0 0-2-2zM6 9h12v2H6V9zm8 5H6v-2h8v2zm4-6H6V6h12v2z',
    close: 'M19 6.41 17.59 5 12 10.59 6.41 5 5 6.41 10.59 12 5 17.59 6.41 19 12 13.41 17.59 19 19 17.59 13.41 12z',
    down: 'M7.41 8.59 12 13.17l4.59-4.58L18 10l-6 6-6-6z',
    send: 'M3.4 20.4 21 12 3.4 3.6 3.39 10.1 15 12 3.39 13.9z',
    clip: 'M16.5 6v11.5a4 4 0 0 1-8 0V5a2.5 2.5 0 0 1 5 0v10.5a1 1 0 0 1-2 0V6H10v9.5a2.5 2.5 0 0 0 5 0V5a4 4 0 0 0-8 0v12.5a5.5 5.5 0 0 0 11 0V6h-1.5z',
    agent: 'M12 1a9 9 0 0 0-9 9v7a3 3 0 0 0 3 3h3v-8H5v-2a7 7 0 0 1 14 0v2h-4v8h4v1h-7v2h6a3 3 0 0 0 3-3V10a9 9 0 0 0-9-9z',
  };
  function icon(name, cls) {
    const NS = 'http://www.w3.org/2000/svg', svg = document.createElementNS(NS, 'svg'), p = document.createElementNS(NS, 'path');
    for (const [k, v] of [['viewBox', '0 0 24 24'], ['aria-hidden', 'true'], ['focusable', 'false'], ['class', cls || '']]) svg.setAttribute(k, v);
    p.setAttribute('d', ICONS[name]);
    svg.append(p);
    return svg;
  }
  function uuid() {
    try { return crypto.randomUUID(); } catch (e) { // randomUUID exists only in secure contexts
      return '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (c) =>
        (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16));
    }
  }
  // localStorage throws in some privacy modes: the widget then simply forgets between pages.
  const storage = {
    get() { try { const v = JSON.parse(localStorage.getItem(STORE_KEY)); return v && typeof v.token === 'string' ? v : null; } catch (e) { return null; } },
    set(v) { try { localStorage.setItem(STORE_KEY, JSON.stringify(v)); } catch (e) { /* ignore */ } },
    del() { try { localStorage.removeItem(STORE_KEY); } catch (e) { /* ignore */ } },
  };
  // The theme colour goes into CSS: only #rgb / #rrggbb gets through.
  function hexColor(c) {
    const m = typeof c === 'string' && /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(c.trim());
    return m ? '#' + (m[1].length === 3 ? m[1].replace(/./g, '$&$&') : m[1]).toLowerCase() : null;
  }
  function contrast(a, b) { // WCAG contrast ratio of two #rrggbb colours
    const lum = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
      .map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
      .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  }
  const chars = (s) => [...s].length; // code points, as the server counts them
  const size = (n) => (n >= 1048576 ? +(n / 1048576).toFixed(1) + ' MB' : Math.ceil(n / 1024) + ' KB');
  const norm = (s) => String(s || '').normalize('NFC').replace(/\s+/g, ' ').trim();
  const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;

  // --- safe Markdown ---
  // Built from DOM nodes (createElement/textContent) only, so no text can ever become markup.
  // Only http(s) links become <a>; other schemes and relative links stay plain words; no <img>.
  function safeUrl(raw) {
    if (!/^https?:\/\//i.test(raw)) return null;
    try { const u = new URL(raw); return /^https?:$/.test(u.protocol) ? u.href : null; } catch (e) { return null; }
  }
  function addText(parent, s) { // single newlines become <br>
    s.split('\n').forEach((part, i) => { if (i) parent.append(h('br')); if (part) parent.append(part); });
  }
  const INLINE = new RegExp([
    '(?<tick>`+)(?<code>[^`][\\s\\S]*?)\\k<tick>(?!`)',
    '(?<bang>!?)\\[(?<label>[^\\]\\n]*)\\]\\(\\s*<?(?<href>(?:[^()\\s<>]|\\([^()\\s]*\\))*)>?(?:\\s+"[^"\\n]*")?\\s*\\)',
    '\\*\\*(?<b1>\\S(?:[\\s\\S]*?\\S)?)\\*\\*',
    '(?<pre>^|[^\\w])__(?<b2>\\S(?:[\\s\\S]*?\\S)?)__(?!\\w)',
    '\\*(?<i1>[^\\s*](?:[^*]*?[^\\s*])?)\\*',
    '(?<pre2>^|[^\\w])_(?<i2>[^\\s_](?:[^_]*?[^\\s_])?)_(?!\\w)', // no lookbehind: older Safari
    '(?<url>https?:\\/\\/[^\\s<>]+)',
  ].join('|'), 'g');
  function inline(text, parent, inLink) {
    const re = new RegExp(INLINE.source, 'g');
    let pos = 0, m;
    while ((m = re.exec(text))) {
      const g = m.groups, start = m.index + (g.pre || g.pre2 || '').length;
      let end = re.lastIndex;
      addText(parent, text.slice(pos, start));
      if (g.tick) parent.append(h('code', { text: g.code }));
      else if (g.href != null) {
        const url = !inLink && safeUrl(g.href), label = g.label || (g.bang ? '' : g.href);
        if (url) { const a = h('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow' }); inline(label || url, a, true); parent.append(a); }
        else if (label) inline(label, parent, true); // unsafe or nested link: its words only
      } else if (g.b1 != null || g.b2 != null) parent.append(inline(g.b1 != null ? g.b1 : g.b2, h('strong'), inLink));
      else if (g.i1 != null || g.i2 != null) parent.append(inline(g.i1 != null ? g.i1 : g.i2, h('em'), inLink));
      else if (g.url) {
        // Trailing punctuation belongs to the sentence, an unbalanced ")" to the text around it.
        let u = g.url;
        const n = (c) => u.split(c).length;
        while (/[.,;:!?'"*_]$/.test(u) || (u.endsWith(')') && n('(') < n(')'))) u = u.slice(0, -1);
        re.lastIndex = end = start + u.length;
        const url = !inLink && safeUrl(u);
        if (url) parent.append(h('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow', text: u }));
        else addText(parent, u);
      }
      pos = end;
    }
    addText(parent, text.slice(pos));
    return parent;
  }
  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*[\w+#.-]*\s*$/, HEADING = /^\s{0,3}#{1,6}\s+(.*?)[\s#]*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/, LIST = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/, QUOTE = /^\s{0,3}>\s?(.*)$/;
  const isBlock = (l) => [FENCE, HEADING, RULE, LIST, QUOTE].some((r) => r.test(l));
  const markdown = (src) => blocks(String(src || '').replace(/\r\n?/g, '\n').split('\n'), document.createDocumentFragment());
  function blocks(lines, parent) {
    let i = 0, m;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) i++;
      else if ((m = FENCE.exec(line))) {
        const body = [];
        for (i++; i < lines.length && lines[i].trim() !== m[1]; i++) body.push(lines[i]);
        i++;
        parent.append(h('pre', null, h('code', { text: body.join('\n') })));
      } else if ((m = HEADING.exec(line))) { parent.append(h('p', { class: 'sb-h' }, inline(m[1], h('strong')))); i++; }
      else if (RULE.test(line)) { parent.append(h('hr')); i++; }
      else if (LIST.test(line)) i = list(lines, i, parent);
      else if (QUOTE.test(line)) {
        const inner = [];
        for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) inner.push(m[1]);
        parent.append(blocks(inner, h('blockquote')));
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() && !(para.length && isBlock(lines[i]))) para.push(lines[i++].trim());
        parent.append(inline(para.join('\n'), h('p')));
      }
    }
    return parent;
  }
  function list(lines, i, parent) { // one list; deeper-indented items nest
    const first = LIST.exec(lines[i]), base = first[1].length, ordered = /\d/.test(first[2]);
    const el = h(ordered ? 'ol' : 'ul');
    if (ordered && parseInt(first[2], 10) !== 1) el.start = parseInt(first[2], 10);
    let li = null, text = [];
    const flush = () => { if (li && text.length) inline(text.join('\n'), li); text = []; };
    while (i < lines.length) {
      const line = lines[i], m = LIST.exec(line);
      if (!line.trim()) { // a blank line continues the list only if an item of it follows
        let j = i + 1;
        while (j < lines.length && !lines[j].trim()) j++;
        const n = j < lines.length && LIST.exec(lines[j]);
        if (n && (n[1].length > base || (n[1].length === base && /\d/.test(n[2]) === ordered))) { i = j; continue; }
        break;
      }
      if (m) {
        if (m[1].length < base) break;
        if (m[1].length > base && li) { flush(); i = list(lines, i, li); continue; }
        if (/\d/.test(m[2]) !== ordered) break;
        flush();
        el.append((li = h('li')));
        text = [m[3]];
      } else if (isBlock(line) || !li) break;
      else text.push(line.trim()); // continuation of the item
      i++;
    }
    flush();
    parent.append(el);
    return i;
  }

  // --- styles: shadow root only; px, not rem (the page's root font size must not matter) ---
  const STYLES = `
:host{all:initial!important;position:fixed!important;top:0!important;left:0!important;width:0!important;height:0!important;
 display:block!important;overflow:visible!important;z-index:2147483000!important}
[hidden]{display:none!important}
.sb-root{--sb-accent:#0b6e4f;--sb-on-accent:#fff;--sb-link:#0b6e4f;--sb-ring:#0b6e4f;color:#1f2328;color-scheme:light;
 font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif,"Apple Color Emoji","Segoe UI Emoji";
 -webkit-font-smoothing:antialiased;text-align:left;direction:ltr}
.sb-root *,.sb-root ::before,.sb-root ::after{box-sizing:border-box}
.sb-sr{position:absolute!important;width:1px;height:1px;margin:-1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
button{font:inherit;color:inherit;cursor:pointer;border:0;background:none;margin:0;padding:0;display:grid;place-items:center}
button svg{fill:currentColor;width:22px;height:22px}
:focus-visible{outline:2px solid var(--sb-ring);outline-offset:2px}
.sb-launcher{position:fixed;bottom:calc(20px + env(safe-area-inset-bottom,0px));right:calc(20px + env(safe-area-inset-right,0px));
 width:60px;height:60px;border-radius:50%;background:var(--sb-accent);color:var(--sb-on-accent);
 box-shadow:0 6px 20px rgba(16,24,40,.22),0 2px 6px rgba(16,24,40,.12);transition:transform .18s}
.sb-launcher:hover{transform:scale(1.06)}
.sb-launcher:focus-visible{outline:none;box-shadow:0 0 0 3px #fff,0 0 0 6px var(--sb-ring)}
.sb-launcher svg{width:28px;height:28px}
.sb-i-close,.sb-open .sb-i-chat{display:none}.sb-open .sb-i-close{display:block}
.sb-badge{position:absolute;top:-4px;right:-4px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;background:#d92d20;color:#fff;
 font-size:12px;font-weight:700;line-height:22px;box-shadow:0 0 0 2px #fff}
.sb-panel{position:fixed;bottom:calc(92px + env(safe-area-inset-bottom,0px));right:calc(20px + env(safe-area-inset-right,0px));
 width:384px;height:min(640px,calc(100vh - 116px));display:flex;flex-direction:column;background:#fff;border-radius:18px;overflow:hidden;
 box-shadow:0 24px 60px rgba(16,24,40,.22),0 4px 14px rgba(16,24,40,.1);border:1px solid rgba(16,24,40,.08);animation:sb-in .2s cubic-bezier(.2,.8,.2,1)}
.sb-left .sb-launcher,.sb-left .sb-panel{right:auto;left:calc(20px + env(safe-area-inset-left,0px))}
@keyframes sb-in{from{opacity:0;transform:translateY(12px) scale(.98)}}
.sb-header{--sb-ring:var(--sb-on-accent);display:flex;align-items:center;gap:12px;padding:14px 10px 14px 16px;background:var(--sb-accent);color:var(--sb-on-accent)}
.sb-avatar{flex:none;width:40px;height:40px;border-radius:50%;display:grid;place-items:center;background:rgba(255,255,255,.18)}
.sb-avatar svg{width:22px;fill:currentColor}
.sb-heading{flex:1;min-width:0}
.sb-title{margin:0;font-size:16px;font-weight:650;line-height:1.25;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.sb-sub{margin:2px 0 0;font-size:13px;display:flex;align-items:center;gap:6px}
.sb-dot{width:8px;height:8px;border-radius:50%;background:#3ccf6e;box-shadow:0 0 0 2px rgba(255,255,255,.5)}
[data-conn$=connecting] .sb-dot{background:#f4b63f;animation:sb-pulse 1.2s infinite}
@keyframes sb-pulse{50%{opacity:.4}}
.sb-close{flex:none;width:40px;height:40px;border-radius:10px}.sb-close:hover{background:rgba(255,255,255,.16)}
.sb-log{flex:1;overflow-y:auto;overscroll-behavior:contain;padding:16px 14px 8px;background:#f6f7f9;display:flex;flex-direction:column;gap:10px}
.sb-empty{margin:auto;padding:24px;text-align:center;color:#57606a;font-size:14px}
.sb-msg{display:flex;flex-direction:column;max-width:85%;align-self:flex-start}
.sb-new{animation:sb-pop .18s ease-out}
@keyframes sb-pop{from{opacity:0;transform:translateY(4px)}}
.sb-bubble{padding:9px 13px;border-radius:16px 16px 16px 5px;overflow-wrap:anywhere;background:#fff;border:1px solid #e3e6ea}
[data-kind=notice] .sb-bubble,[data-kind=fallback] .sb-bubble{background:#f2f4f7;border-style:dashed}
[data-role=human] .sb-bubble{background:#fff8e6;border-color:#f1d48f}
.sb-who{font-size:12px;font-weight:650;color:#7a4b00;margin:0 0 3px 4px;display:flex;align-items:center;gap:4px}
.sb-who svg{width:14px;height:14px;fill:currentColor}
.sb-msg[data-role=customer]{align-self:flex-end;align-items:flex-end}
[data-role=customer] .sb-bubble{background:var(--sb-accent);color:var(--sb-on-accent);border:0;border-radius:16px 16px 5px 16px;white-space:pre-wrap}
.sb-pending .sb-bubble{opacity:.7}
.sb-meta{font-size:12px;color:#57606a;margin:3px 4px 0}
.sb-files{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:4px}
.sb-files img{width:64px;height:64px;object-fit:cover;border-radius:10px}
.sb-att{display:block;font-size:13px}
.sb-quick{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
.sb-qr{padding:6px 16px;border-radius:999px;border:1px solid var(--sb-ring);color:var(--sb-link);background:#fff;font-weight:600}
.sb-qr:hover{background:color-mix(in srgb,var(--sb-ring) 10%,#fff)}
.sb-msg[data-role=system]{align-self:center;max-width:92%;text-align:center;font-size:13px;color:#475467;background:#eaecf0;padding:5px 12px;border-radius:999px}
.sb-bubble p,.sb-bubble ul,.sb-bubble ol,.sb-bubble pre,.sb-bubble blockquote{margin:0 0 8px}
.sb-bubble :last-child{margin-bottom:0}
.sb-bubble ul,.sb-bubble ol{padding-left:22px}.sb-bubble li>*{margin:2px 0}
.sb-bubble a{color:var(--sb-link);text-underline-offset:2px}
.sb-bubble code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eff1f3;border-radius:5px;padding:1px 5px}
.sb-bubble pre{padding:10px 12px;background:#1f2328;color:#f6f8fa;border-radius:10px;overflow-x:auto}
.sb-bubble pre code{background:none;padding:0;color:inherit}
.sb-bubble blockquote{padding-left:10px;border-left:3px solid #d0d7de;color:#424a53}
.sb-bubble hr{border:0;border-top:1px solid #e3e6ea}
.sb-typing{display:flex;align-items:center;gap:8px;min-height:20px;color:#57606a;font-size:13px}
.sb-md:not(:empty)+.sb-typing{margin-top:6px}
.sb-dots{display:inline-flex;gap:4px}
.sb-dots i{width:7px;height:7px;border-radius:50%;background:#98a2b3;opacity:.35;animation:sb-blink 1.2s infinite}
.sb-dots i:nth-child(2){animation-delay:.15s}.sb-dots i:nth-child(3){animation-delay:.3s}
@keyframes sb-blink{40%{opacity:1;transform:translateY(-3px)}}
.sb-foot{border-top:1px solid #eaecf0;padding:8px 10px 10px}
.sb-error{margin:0 2px 8px;padding:7px 10px;border-radius:10px;background:#fef3f2;color:#b42318;font-size:13px;border:1px solid #fecdca}
.sb-thumbs{display:flex;gap:8px;margin:0 2px 8px}.sb-thumbs:empty{display:none}
.sb-thumb{position:relative}
.sb-thumb img{width:56px;height:56px;object-fit:cover;border-radius:10px;border:1px solid #d0d5dd;display:block}
.sb-thumb button{position:absolute;top:-8px;right:-8px;width:24px;height:24px;border-radius:50%;background:#1f2328;color:#fff;box-shadow:0 0 0 2px #fff}
.sb-thumb svg{width:14px;height:14px}
.sb-composer{display:flex;align-items:flex-end;gap:6px;border:1px solid #d0d5dd;border-radius:14px;padding:4px}
.sb-composer:focus-within{border-color:var(--sb-ring);box-shadow:0 0 0 3px color-mix(in srgb,var(--sb-ring) 18%,transparent)}
.sb-input{flex:1;min-width:0;resize:none;border:0;background:none;font:inherit;color:inherit;padding:8px 4px;max-height:140px;min-height:38px}
.sb-input::placeholder{color:#667085}
.sb-input:focus-visible{outline:none}
.sb-attach,.sb-send{flex:none;width:38px;height:38px;border-radius:10px;color:#475467}
.sb-attach:hover{background:#f2f4f7}
.sb-send{background:var(--sb-accent);color:var(--sb-on-accent)}
.sb-send:disabled{background:#eaecf0;color:#667085;cursor:default}
.sb-counter{font-size:12px;color:#57606a;text-align:right;margin:4px 4px 0}
.sb-over{color:#b42318;font-weight:600}
@media (max-width:639.98px){
 .sb-panel,.sb-left .sb-panel{inset:0;width:100%;height:100vh;height:100dvh;border-radius:0;border:0;
  padding:env(safe-area-inset-top,0px) env(safe-area-inset-right,0px) env(safe-area-inset-bottom,0px) env(safe-area-inset-left,0px)}
 .sb-open .sb-launcher{display:none}
 .sb-input{font-size:16px}
}
@media (prefers-reduced-motion:reduce){.sb-root *{animation:none!important;transition:none!important}}
`;

  // --- state ---
  let S = null; // the booted widget; null before boot and after shutdown
  let explicitBoot = false;

  function emit(name, payload) {
    for (const fn of listeners[name].slice()) {
      try { fn(payload); } catch (e) { console.error('[supportbot]', name, 'listener failed:', e); }
    }
  }
  // Whose conversation the stored one is: the user's id (a token's sub), else their email.
  const userKey = (u) => String((u && (u.token ? tokenSub(u.token) : u.id != null && u.id !== '' ? u.id : u.email)) || '');
  function tokenSub(token) { // read, not verified: only the server can check the signature
    try {
      const part = String(token).split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const sub = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)))).sub;
      if (sub != null && sub !== '') return String(sub);
    } catch (e) { /* not a JWT: the server says so */ }
    return 'token:' + token; // no readable sub: a conversation of its own, which the server then refuses
  }

  // Defaults < /widget/config < data-* attributes < boot options.
  function theme() {
    const t = Object.assign({}, DEFAULTS), d = (SCRIPT && SCRIPT.dataset) || {};
    const attrs = { title: d.title, color: d.color, position: d.position, greeting: d.greeting };
    for (const src of [S.server, attrs, S.opts]) {
      for (const k in DEFAULTS) if (src && src[k] != null && src[k] !== '') t[k] = src[k];
    }
    t.color = hexColor(t.color) || hexColor(S.server && S.server.color) || DEFAULTS.color;
    t.position = t.position === 'left' ? 'left' : 'right';
    for (const k of ['max_message_chars', 'max_image_bytes', 'max_images']) if (!(Number(t[k]) > 0)) t[k] = DEFAULTS[k];
    return t;
  }

  function boot(opts) {
    opts = opts && typeof opts === 'object' ? opts : {};
    if (S) { // booted again: take the new options; another user means an identity switch
      Object.assign(S.opts, opts);
      if ('user' in opts) identify(opts.user);
      if (S.ui) applyTheme();
      if (opts.open) openPanel(false);
      return;
    }
    const me = S = {
      opts: Object.assign({}, opts), server: null, user: opts.user || null, key: userKey(opts.user),
      conv: null, ws: null, wsReady: false, state: 'closed', attempt: 0, timer: 0, creating: false, everConnected: false,
      fatal: null, auth401: 0, isOpen: false, openOnMount: opts.open ? 'nofocus' : null, ui: null,
      outbox: [], streams: new Map(), finished: new Set(), statusLines: [], convStatus: 'bot', files: [], unread: 0,
    };
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 5000); // a slow config must not keep the widget away
    fetch(BASE + '/widget/config', { signal: ctl.signal, credentials: 'omit' })
      .then((r) => (r.ok ? r.json() : null)).catch(() => null)
      .then((cfg) => {
        if (S !== me) return; // shut down meanwhile
        S.server = cfg && typeof cfg === 'object' ? cfg : {};
        if (document.body) mount(); else document.addEventListener('DOMContentLoaded', () => S === me && mount(), { once: true });
      });
  }

  // --- UI ---
  function mount() {
    const host = h('div', { id: 'supportbot-widget', 'data-state': S.state });
    const root = host.attachShadow({ mode: 'open' });
    try { // a constructed stylesheet is not blocked by a page's style-src CSP, a <style> may be
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(STYLES);
      root.adoptedStyleSheets = [sheet];
    } catch (e) { root.append(h('style', { text: STYLES })); }
    const ui = S.ui = { host };
    ui.badge = h('span', { class: 'sb-badge', 'aria-hidden': 'true', hidden: true });
    ui.launcher = h('button', {
      type: 'button', class: 'sb-launcher', 'aria-label': 'Open support chat', 'aria-expanded': 'false', 'aria-controls': 'sb-panel',
      onclick: () => (S.isOpen ? closePanel(true) : openPanel(true)),
    }, icon('chat', 'sb-i-chat'), icon('close', 'sb-i-close'), ui.badge);
    ui.title = h('h2', { class: 'sb-title', id: 'sb-title' });
    ui.sub = h('span');
    ui.log = h('div', { class: 'sb-log', role: 'log', 'aria-label': 'Conversation', tabindex: '0' });
    ui.input = h('textarea', {
      class: 'sb-input', id: 'sb-input', rows: '1', placeholder: 'Write a message…', 'aria-describedby': 'sb-counter',
      enterkeyhint: 'send', oninput: updateComposer, onkeydown: onKey, onpaste: onPaste,
    });
    ui.file = h('input', {
      class: 'sb-file', type: 'file', accept: IMAGE_TYPES.join(','), multiple: true, hidden: true, tabindex: '-1', 'aria-hidden': 'true',
      onchange: () => { addFiles([...ui.file.files]); ui.file.value = ''; },
    });
    ui.send = h('button', { type: 'submit', class: 'sb-send', 'aria-label': 'Send message', title: 'Send', disabled: true }, icon('send'));
    ui.thumbs = h('div', { class: 'sb-thumbs' });
    ui.counter = h('div', { class: 'sb-counter', id: 'sb-counter', hidden: true });
    ui.errors = h('div');
    ui.panel = h('div', {
      class: 'sb-panel', id: 'sb-panel', role: 'dialog', 'aria-modal': 'false', 'aria-labelledby': 'sb-title', hidden: true,
      onkeydown: (e) => { if (e.key === 'Escape' && !e.isComposing) { e.stopPropagation(); closePanel(true); } },
    },
    h('div', { class: 'sb-header' },
      h('div', { class: 'sb-avatar', 'aria-hidden': 'true' }, icon('agent')),
      h('div', { class: 'sb-heading' }, ui.title, h('p', { class: 'sb-sub' }, h('span', { class: 'sb-dot', 'aria-hidden': 'true' }), ui.sub)),
      h('button', { type: 'button', class: 'sb-close', 'aria-label': 'Minimize chat', title: 'Minimize', onclick: () => closePanel(true) }, icon('down'))),
    ui.log,
    h('div', { class: 'sb-foot' }, ui.errors, ui.thumbs,
      h('form', { class: 'sb-composer', onsubmit: (e) => { e.preventDefault(); send(); } },
        h('label', { class: 'sb-sr', for: 'sb-input', text: 'Message' }),
        h('button', { type: 'button', class: 'sb-attach', 'aria-label': 'Attach an image', title: 'Attach an image', onclick: () => ui.file.click() }, icon('clip')),
        ui.file, ui.input, ui.send),
      ui.counter));
    ui.root = h('div', { class: 'sb-root', 'data-conn': S.state }, ui.panel, ui.launcher);
    root.append(ui.root);
    document.body.append(host);
    applyTheme();
    window.addEventListener('online', wake);
    document.addEventListener('visibilitychange', onVisible);
    // A stored conversation of this user reconnects at once (history, unread replies);
    // one of another user is forgotten.
    const saved = storage.get();
    if (saved && saved.userKey === S.key) { S.conv = saved; connect(); } else if (saved) storage.del();
    S.readyFired = true;
    emit('ready');
    if (S && S.openOnMount) openPanel(S.openOnMount === 'focus');
  }

  function applyTheme() {
    const t = theme(), ui = S.ui, white = contrast(t.color, '#ffffff');
    const vars = { accent: t.color, 'on-accent': white >= contrast(t.color, '#101828') ? '#ffffff' : '#101828',
      link: white >= 4.5 ? t.color : '#1a5fb4', ring: white >= 3 ? t.color : '#1a5fb4' };
    for (const k in vars) ui.root.style.setProperty('--sb-' + k, vars[k]);
    ui.root.classList.toggle('sb-left', t.position === 'left');
    ui.title.textContent = t.title;
    renderIntro();
    setState(S.state);
    updateComposer();
  }

  function setState(state) {
    S.state = state;
    if (!S.ui) return;
    S.ui.host.setAttribute('data-state', state);
    S.ui.root.setAttribute('data-conn', state);
    S.ui.sub.textContent = { connecting: 'Connecting…', reconnecting: 'Reconnecting…' }[state] ||
      (S.convStatus === 'human' ? 'Our team will reply here' : 'We reply in a few seconds');
  }

  function openPanel(focus) {
    if (!S.ui) { S.openOnMount = focus ? 'focus' : 'nofocus'; return; }
    const ui = S.ui, was = S.isOpen;
    S.isOpen = true;
    ui.panel.hidden = false;
    ui.root.classList.add('sb-open');
    ui.launcher.setAttribute('aria-expanded', 'true');
    ui.launcher.setAttribute('aria-label', 'Close support chat');
    S.unread = 0;
    updateBadge();
    scrollDown(true);
    if (focus) requestAnimationFrame(() => ui.input.focus({ preventScroll: true }));
    wake();
    if (!was) emit('open');
  }
  function closePanel(returnFocus) {
    if (!S.ui) { S.openOnMount = null; return; }
    const ui = S.ui;
    if (!S.isOpen) return;
    if (ui.panel.contains(ui.host.shadowRoot.activeElement)) returnFocus = true; // never strand focus
    S.isOpen = false;
    ui.panel.hidden = true;
    ui.root.classList.remove('sb-open');
    ui.launcher.setAttribute('aria-expanded', 'false');
    ui.launcher.setAttribute('aria-label', 'Open support chat');
    if (returnFocus) ui.launcher.focus();
    emit('close');
  }
  function updateBadge() {
    S.ui.badge.hidden = !S.unread;
    S.ui.badge.textContent = S.unread > 9 ? '9+' : String(S.unread);
  }

  // --- transcript ---
  function scrollDown(force) { // follow new content unless the reader scrolled up
    const l = S.ui.log;
    if (force || S.stick !== false) requestAnimationFrame(() => { l.scrollTop = l.scrollHeight; });
  }
  function append(el, before) {
    const l = S.ui.log;
    S.stick = l.scrollHeight - l.scrollTop - l.clientHeight < 80;
    const empty = l.querySelector('.sb-empty');
    if (empty) empty.remove();
    el.classList.add('sb-new'); // only live additions fade in; a history rebuild or a finished reply must not flicker
    if (before) before.before(el); else l.append(el);
    scrollDown();
    return el;
  }
  const findMsg = (id) => (id == null ? null : S.ui.log.querySelector(`.sb-msg[data-id="${CSS.escape(String(id))}"]`));
  const streamingEl = () => S.ui.log.querySelector('.sb-streaming');

  function messageEl(m) {
    const role = m.role === 'customer' || m.role === 'human' ? m.role : 'bot';
    const el = h('div', { class: 'sb-msg', 'data-role': role, 'data-id': m.id != null ? String(m.id) : null, 'data-kind': m.kind || null });
    const d = new Date(m.created_at);
    if (m.created_at && !isNaN(d)) el.title = d.toLocaleString();
    const bubble = h('div', { class: 'sb-bubble' });
    if (role === 'customer') { // a customer's words are shown as typed, never interpreted
      if (m.text) bubble.append(m.text);
      if (m.images) bubble.append(h('span', { class: 'sb-att', text: '📎 ' + plural(m.images, 'image') }));
    } else {
      if (role === 'human') el.append(h('div', { class: 'sb-who' }, icon('agent'), 'Support team'));
      bubble.append(markdown(m.text));
    }
    el.append(bubble);
    // Answers offered with a question (Yes / No under a confirmation): each sends its words as the
    // customer's message; they go as soon as the customer answers, by a button or by typing.
    const replies = role === 'bot' && Array.isArray(m.quick_replies) ? m.quick_replies.filter((r) => typeof r === 'string' && r) : [];
    if (replies.length) {
      el.append(h('div', { class: 'sb-quick', role: 'group', 'aria-label': 'Quick replies' },
        ...replies.map((r) => h('button', { type: 'button', class: 'sb-qr', text: r, onclick: () => quickReply(r) }))));
    }
    return el;
  }
  const dropQuickReplies = () => S.ui.log.querySelectorAll('.sb-quick').forEach((e) => e.remove());
  const systemEl = (text) => h('div', { class: 'sb-msg', 'data-role': 'system', text });

  function renderIntro() { // the configured greeting on top, or a hint while the log is empty
    const log = S.ui.log, greeting = theme().greeting;
    log.querySelectorAll('.sb-intro,.sb-empty').forEach((e) => e.remove());
    if (typeof greeting === 'string' && greeting.trim()) {
      const el = messageEl({ role: 'bot', text: greeting });
      el.classList.add('sb-intro');
      log.prepend(el);
    }
    if (!log.querySelector('.sb-msg')) log.append(h('p', { class: 'sb-empty', text: 'Ask us anything — we are here to help.' }));
  }
  function clearTranscript() {
    for (const s of S.streams.values()) cancelAnimationFrame(s.raf);
    S.streams.clear();
    S.ui.log.replaceChildren();
    renderIntro();
  }

  // A streamed reply grows in a bubble marked aria-busy; when complete it is replaced by a new
  // node, so the log (a polite live region) reads the whole message once, not token by token.
  function stream(turn) {
    let s = S.streams.get(turn);
    if (s) return s;
    s = { text: '', lastSeq: -1, raf: 0, md: h('div', { class: 'sb-md' }), label: h('span') };
    s.typing = h('div', { class: 'sb-typing' }, h('span', { class: 'sb-dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')), s.label);
    s.el = h('div', { class: 'sb-msg sb-streaming', 'data-role': 'bot', 'aria-busy': 'true' }, h('div', { class: 'sb-bubble' }, s.md, s.typing));
    S.streams.set(turn, s);
    append(s.el);
    return s;
  }
  function paint(s) { // at most once per frame: re-rendering Markdown per token would be wasteful
    s.typing.hidden = !!s.text && !s.label.textContent;
    if (!s.raf) {
      s.raf = requestAnimationFrame(() => {
        const l = S.ui.log;
        s.raf = 0;
        S.stick = l.scrollHeight - l.scrollTop - l.clientHeight < 80;
        s.md.replaceChildren(markdown(s.text));
        scrollDown();
      });
    }
  }
  function toolLabel(turn, label) {
    if (S.finished.has(turn)) return;
    const s = stream(turn);
    s.label.textContent = label || '';
    paint(s);
  }

  // --- server frames ---
  function onFrame(f) {
    switch (f && f.type) {
      case 'history': return onHistory(f);
      case 'ack': return onAck(f);
      case 'message':
        if (f.conversation_status === 'human' || f.conversation_status === 'bot') onStatus({ status: f.conversation_status });
        return onMessage(f.message, f.client_message_id);
      case 'turn_started': return S.finished.has(f.turn) || stream(f.turn);
      case 'delta': return onDelta(f);
      case 'tool_started': return toolLabel(f.turn, f.label || 'Working on it…');
      case 'tool_finished': return toolLabel(f.turn, null);
      case 'turn_finished': case 'turn_failed': return onTurnEnd(f.turn, f.message);
      case 'status': return onStatus(f);
      case 'error': return onError(f);
      default: return null; // a newer server's frame: ignore
    }
  }

  function onHistory(f) {
    S.attempt = S.auth401 = 0;
    S.everConnected = true;
    S.convStatus = (f.conversation && f.conversation.status) || 'bot';
    const log = S.ui.log, msgs = (Array.isArray(f.messages) ? f.messages : []).filter((m) => m && typeof m === 'object');
    clearTranscript();
    for (const m of msgs) log.append(messageEl(m));
    // Status lines are not stored messages: put them back after the message they followed.
    for (const st of S.statusLines) {
      const after = findMsg(st.after), el = systemEl(st.text);
      if (after) after.after(el); else if (st.after == null) log.append(el);
    }
    // Our own messages: acknowledged ones are in the history now; the others are shown again
    // and re-sent by flush() (the server de-duplicates them by client_message_id).
    const claimed = new Set();
    S.outbox = S.outbox.filter((o) => {
      const hit = msgs.slice().reverse().find((m) => m.role === 'customer' && !claimed.has(m.id) &&
        (m.client_message_id ? m.client_message_id === o.cid : o.state === 'acked' && norm(m.text) === norm(o.text)));
      if (hit) claimed.add(hit.id);
      if (hit || o.state === 'acked') return false;
      o.state = 'queued';
      log.append(o.el);
      return true;
    });
    const live = f.live;
    if (live && typeof live === 'object') {
      S.finished.delete(live.turn);
      const s = stream(live.turn);
      s.text = String(live.text || '');
      s.lastSeq = Number.isInteger(live.seq) ? live.seq : -1;
      if (live.tool) s.label.textContent = 'Working on it…'; // Live names the tool but has no label
      paint(s);
    }
    renderIntro();
    S.wsReady = true;
    setState('ready');
    flush();
    scrollDown(true);
  }

  const settle = (o, id) => { // an optimistic bubble is confirmed
    o.el.classList.remove('sb-pending');
    o.meta.remove();
    if (id != null) { o.el.setAttribute('data-id', String(id)); S.outbox.splice(S.outbox.indexOf(o), 1); }
  };
  function onAck(f) {
    const o = S.outbox.find((x) => x.cid === f.client_message_id);
    if (!o) return;
    o.state = 'acked';
    settle(o);
    // Stored before (the previous socket died before its ack): the history shows it already.
    if (f.duplicate && o.text && [...S.ui.log.querySelectorAll('.sb-msg[data-role=customer][data-id]')]
      .some((el) => norm(el.firstChild.firstChild && el.firstChild.firstChild.textContent) === norm(o.text))) {
      o.el.remove();
      S.outbox.splice(S.outbox.indexOf(o), 1);
    }
  }

  function onMessage(m, frameCid) {
    if (!m || typeof m !== 'object' || findMsg(m.id)) return;
    if (m.role === 'customer') {
      // Our own message echoed back: confirm the optimistic bubble instead of adding a twin. Match
      // by client_message_id (on the frame or the message); without one, by the text we sent.
      const cid = frameCid || m.client_message_id;
      const o = S.outbox.find((x) => (cid ? x.cid === cid : x.state !== 'queued' && norm(x.text) === norm(m.text)));
      if (!o) { dropQuickReplies(); append(messageEl(m)); return; } // from another tab or client: an answer too
      o.state = 'acked'; // echoed means stored: never re-send it
      settle(o, m.id);
      return;
    }
    append(messageEl(m), m.role === 'human' && streamingEl()); // a person's reply goes before a reply still streaming
    arrived(m);
  }

  function onDelta(f) {
    if (S.finished.has(f.turn) || typeof f.text !== 'string') return;
    const s = stream(f.turn);
    if (typeof f.seq === 'number') {
      if (f.seq <= s.lastSeq) return; // already shown (from history's live, or a resend)
      s.lastSeq = f.seq;
    }
    s.text += f.text;
    paint(s);
  }

  function onTurnEnd(turn, m) {
    S.finished.add(turn);
    const s = S.streams.get(turn);
    S.streams.delete(turn);
    if (s) cancelAnimationFrame(s.raf);
    if (!m || typeof m !== 'object' || (!m.text && m.id == null) || findMsg(m.id)) {
      if (s) s.el.remove(); // e.g. a person has the conversation: the bot stays silent
      return;
    }
    const el = messageEl(m);
    if (s) { s.el.replaceWith(el); scrollDown(); } else append(el);
    arrived(m);
  }

  function arrived(m) {
    if (!S.isOpen) { S.unread++; updateBadge(); }
    emit('message', m);
  }

  function onStatus(f) {
    const prev = S.convStatus;
    S.convStatus = f.status || prev;
    setState(S.state);
    if (f.text) {
      const last = [...S.ui.log.querySelectorAll('.sb-msg[data-id]')].pop();
      S.statusLines.push({ text: String(f.text), after: last ? last.getAttribute('data-id') : null });
      append(systemEl(String(f.text)), streamingEl());
    }
    if (f.status === 'human' && prev !== 'human') emit('handoff', { status: f.status, text: f.text || null });
  }

  function onError(f) {
    if (f.retryable) {
      // Not stored (the database is down, or this server is shutting down): keep the message queued
      // and reconnect with backoff; the new socket sends it again (its client_message_id makes it once).
      showError('We cannot reach support right now. Trying again…');
      if (S.ws) S.ws.close(4503, 'retry');
      return;
    }
    showError(f.message || 'Something went wrong.');
    // The refused message is the one named by client_message_id or else, as frames are answered
    // in order, the oldest sent but unacknowledged one. Its text goes back into the input.
    const cid = f.client_message_id;
    const o = S.outbox.find((x) => (cid ? x.cid === cid : x.state === 'sent'));
    if (o) giveBack(o);
  }

  // --- composer ---
  const showError = (text) => S.ui.errors.replaceChildren(h('div', { class: 'sb-error', role: 'alert', text }));
  const clearError = () => S.ui.errors.replaceChildren();

  function giveBack(o) {
    S.outbox.splice(S.outbox.indexOf(o), 1);
    o.el.remove();
    const input = S.ui.input;
    input.value = o.text + (input.value ? '\n' + input.value : '');
    S.files = o.files.concat(S.files).slice(0, theme().max_images);
    renderThumbs();
  }

  function onKey(e) { // Enter sends, Shift+Enter is a new line; not while an IME composes
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); send(); }
  }
  function updateComposer() {
    const { input, counter, send: button } = S.ui, max = theme().max_message_chars;
    input.style.height = 'auto';
    input.style.height = Math.min(input.scrollHeight, 140) + 'px';
    const n = chars(input.value), over = n > max;
    counter.hidden = n < max * 0.8;
    counter.classList.toggle('sb-over', over);
    counter.textContent = over ? `${plural(n - max, 'character')} over the limit of ${max}` : `${n} / ${max}`;
    button.disabled = over || (!input.value.trim() && !S.files.length);
    input.setAttribute('aria-invalid', String(over));
  }

  function onPaste(e) {
    const cd = e.clipboardData;
    const files = cd ? [...cd.items].filter((it) => it.kind === 'file').map((it) => it.getAsFile()).filter(Boolean) : [];
    if (!files.length) return;
    if (!cd.types.includes('text/plain')) e.preventDefault();
    addFiles(files);
  }

  function addFiles(files) {
    const t = theme(), me = S;
    for (const file of files) {
      if (!IMAGE_TYPES.includes(file.type)) { showError('Only PNG, JPEG, GIF or WebP images can be sent.'); continue; }
      if (file.size > t.max_image_bytes) { showError(`That image is too large (${size(file.size)}); the limit is ${size(t.max_image_bytes)}.`); continue; }
      if (S.files.length >= t.max_images) { showError(`You can attach up to ${plural(t.max_images, 'image')} per message.`); break; }
      const entry = { name: file.name || 'image', url: null }, reader = new FileReader();
      S.files.push(entry);
      reader.onload = () => {
        if (S !== me || !S.files.includes(entry)) return;
        entry.url = String(reader.result);
        if (!entry.url.startsWith('data:image/')) S.files.splice(S.files.indexOf(entry), 1);
        renderThumbs();
      };
      reader.onerror = () => { S.files.splice(S.files.indexOf(entry), 1); showError('That image could not be read.'); renderThumbs(); };
      reader.readAsDataURL(file);
    }
    updateComposer();
  }

  function renderThumbs() { // the thumbnails are the customer's own local data: URLs
    S.ui.thumbs.replaceChildren(...S.files.filter((f) => f.url).map((f, i) => h('div', { class: 'sb-thumb' },
      h('img', { src: f.url, alt: `Attached image ${i + 1}: ${f.name}` }),
      h('button', { type: 'button', 'aria-label': `Remove image ${i + 1}`, title: 'Remove',
        onclick: () => { S.files.splice(S.files.indexOf(f), 1); renderThumbs(); S.ui.input.focus(); } }, icon('close')))));
    updateComposer();
  }

  function send() {
    const ui = S.ui, t = theme(), text = ui.input.value.trim();
    if (S.files.some((f) => !f.url) || (!text && !S.files.length)) return; // empty, or an image is still loading
    if (chars(text) > t.max_message_chars) { showError(`Your message is too long: at most ${t.max_message_chars} characters, please shorten it.`); return; }
    if (S.fatal) { showError(S.fatal); return; }
    enqueue(text, S.files);
    ui.input.value = '';
    S.files = [];
    renderThumbs();
  }
  function quickReply(text) { // what the customer typed so far stays in the input
    if (S.fatal) { showError(S.fatal); return; }
    enqueue(text, []);
  }
  function enqueue(text, files) {
    clearError();
    dropQuickReplies();
    const o = { cid: uuid(), text, files, state: 'queued', meta: h('span', { class: 'sb-meta', text: 'Sending…' }) };
    const bubble = h('div', { class: 'sb-bubble' });
    if (o.files.length) bubble.append(h('div', { class: 'sb-files' }, ...o.files.map((f, i) => h('img', { src: f.url, alt: `Image ${i + 1}` }))));
    bubble.append(text);
    o.el = h('div', { class: 'sb-msg sb-pending', 'data-role': 'customer' }, bubble, o.meta);
    S.outbox.push(o);
    append(o.el);
    scrollDown(true);
    flush();
    wake();
  }

  function flush() { // send what is queued, once the socket is open and history has arrived
    const ws = S.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !S.wsReady) return;
    for (const o of S.outbox) {
      if (o.state !== 'queued') continue;
      const frame = { type: 'message', text: o.text, client_message_id: o.cid };
      if (o.files.length) frame.images = o.files.map((f) => ({ url: f.url }));
      ws.send(JSON.stringify(frame));
      o.state = 'sent';
    }
  }

  // --- connection ---
  async function createConversation() {
    const me = S;
    S.creating = true;
    setState(S.everConnected ? 'reconnecting' : 'connecting');
    let r, data;
    try {
      r = await fetch(BASE + '/api/v1/conversations', {
        method: 'POST', credentials: 'omit', headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify(S.user ? { user: S.user } : {}),
      });
      data = await r.json().catch(() => null);
    } catch (e) { r = null; }
    if (S !== me) return;
    S.creating = false;
    if (!r || !r.ok || !data || !data.token) {
      const err = (data && data.error) || {};
      if (r && (r.status === 401 || r.status === 403)) {
        console.warn('[supportbot]', r.status, err.code, err.message);
        fail(err.code === 'origin_not_allowed' ? 'Chat is not available on this site.'
          : err.code === 'identity_invalid' ? 'We could not confirm your sign-in. Please reload the page and try again.'
            : 'The chat could not start. Please reload the page and try again.');
        return;
      }
      // A refused origin gets no CORS headers, so the browser reports it as a network error too.
      showError(r && r.status === 429 ? 'Too many chats were started from here. Please try again in a moment.'
        : 'We cannot reach support right now. Trying again…');
      retry(r && Number(r.headers.get('Retry-After')) * 1000);
      return;
    }
    S.conv = { id: data.id, token: data.token, userKey: S.key };
    storage.set(S.conv);
    clearError();
    // The greeting is shown at once; the history frame that follows brings it again, with its id.
    if (data.greeting && !S.ui.log.querySelector('.sb-msg[data-id]')) {
      append(messageEl({ role: 'bot', text: data.greeting, kind: 'greeting' }), S.ui.log.querySelector('[data-role=customer]'));
    }
    connect();
  }

  function fail(text) { // permanent until identify/boot: no retries, unsent text back in the input
    S.fatal = text;
    setState('closed');
    showError(text);
    for (const o of S.outbox.slice().reverse()) giveBack(o);
  }

  function connect() {
    clearTimeout(S.timer);
    setState(S.everConnected ? 'reconnecting' : 'connecting');
    let ws;
    try {
      // The token rides in Sec-WebSocket-Protocol, never in the URL (URLs end up in logs).
      ws = new WebSocket(WS_URL, ['supportbot.v1', 'token.' + S.conv.token]);
    } catch (e) { retry(); return; }
    const me = S;
    S.ws = ws;
    S.wsReady = false;
    ws.onmessage = (ev) => {
      if (S !== me || S.ws !== ws) return;
      let f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      onFrame(f);
    };
    ws.onclose = (ev) => { if (S === me && S.ws === ws) onClosed(ev.code); };
  }

  function onClosed(code) {
    S.ws = null;
    S.wsReady = false;
    for (const o of S.outbox) if (o.state === 'sent') o.state = 'queued';
    if (code === 4401) {
      // The token is not known (any more): forget it and start a new conversation.
      storage.del();
      S.conv = null;
      S.statusLines = [];
      S.finished.clear();
      clearTranscript();
      for (const o of S.outbox) append(o.el);
      if (++S.auth401 > 3) fail('The chat could not start. Please reload the page and try again.');
      else if (S.auth401 > 1) retry();
      else wake();
      return;
    }
    if (code === 1009) { // our frame was too large: give the message back instead of re-sending it forever
      const o = S.outbox.find((x) => x.files.length) || S.outbox[0];
      if (o) giveBack(o);
      showError('That message is too large to send. Try fewer or smaller images.');
    }
    if (code === 4429) showError('The chat is open in too many windows. Close some of them and it will reconnect.');
    retry();
  }

  // Exponential backoff with jitter, 1 s doubling up to 30 s; wake() skips the wait.
  function retry(minMs) {
    clearTimeout(S.timer);
    setState(S.everConnected ? 'reconnecting' : 'connecting');
    const base = Math.min(30000, 1000 * 2 ** S.attempt++);
    S.timer = setTimeout(wake, Math.max(minMs || 0, Math.min(30000, base * (0.75 + Math.random() * 0.5))));
  }
  function wake() { // (re)connect now if there is a reason to
    if (!S || !S.ui || S.fatal || S.ws || S.creating) return;
    clearTimeout(S.timer);
    if (S.conv) connect();
    else if (S.isOpen || S.outbox.length) createConversation();
    else setState('closed');
  }
  const onVisible = () => document.visibilityState === 'visible' && wake();

  function forget() { // drop the conversation, keep the UI
    const ws = S.ws;
    S.ws = null;
    clearTimeout(S.timer);
    if (ws) try { ws.close(1000); } catch (e) { /* closed already */ }
    storage.del();
    Object.assign(S, { conv: null, outbox: [], statusLines: [], convStatus: 'bot', fatal: null, attempt: 0, everConnected: false, auth401: 0 });
    S.finished.clear();
    if (S.ui) { clearTranscript(); clearError(); setState('closed'); }
  }

  // --- commands ---
  function identify(user) {
    const key = userKey(user);
    S.user = S.opts.user = user && typeof user === 'object' ? user : null;
    if (key === S.key) return; // the same person (maybe with a fresh token or hash): keep the conversation
    S.key = key;
    forget();
    if (S.isOpen) wake();
  }

  function shutdown() { // logout: no UI, no socket, no stored token
    forget();
    if (S.ui) S.ui.host.remove();
    window.removeEventListener('online', wake);
    document.removeEventListener('visibilitychange', onVisible);
    S = null;
  }

  function run(cmd, ...args) {
    const [a, b] = args;
    if (cmd === 'boot') { explicitBoot = true; return boot(a); }
    if (cmd === 'on' || cmd === 'off') {
      const l = listeners[a];
      if (!l || typeof b !== 'function') return console.warn('[supportbot] unknown event:', a);
      if (cmd === 'off') { if (l.includes(b)) l.splice(l.indexOf(b), 1); return undefined; }
      l.push(b);
      if (a === 'ready' && S && S.readyFired) setTimeout(b, 0); // a late subscriber still hears it
      return undefined; // not an unsubscribe function: Playwright's evaluate() would call it
    }
    if (cmd === 'open' && !S && !explicitBoot) boot({});
    if (!S) return undefined; // before boot or after shutdown
    switch (cmd) {
      // Focus the input only when a person asked (a click), never on page load.
      case 'open': return openPanel(!navigator.userActivation || navigator.userActivation.isActive);
      case 'close': return closePanel(false);
      case 'identify': return identify(a);
      case 'shutdown': explicitBoot = true; return shutdown();
      default: return console.warn('[supportbot] unknown command:', cmd);
    }
  }

  const queued = (window.Supportbot && Array.isArray(window.Supportbot.q)) ? window.Supportbot.q : [];
  const api = function Supportbot() { return run(...arguments); };
  Object.defineProperty(api, '__supportbot', { value: true });
  window.Supportbot = api;
  for (const args of queued) {
    try { run(...args); } catch (e) { console.error('[supportbot] queued command failed:', e); }
  }
  // A bare script tag works too: boot with defaults if the page did not.
  const autoBoot = () => { if (!explicitBoot && !S) boot({}); };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', autoBoot, { once: true });
  else setTimeout(autoBoot, 0);
})();
