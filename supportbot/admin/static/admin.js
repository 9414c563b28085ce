// supportbot admin: small progressive enhancements. Everything works without it.
(function () {
  'use strict';

  // Buttons that ask first (close, hand back).
  document.addEventListener('submit', function (event) {
    var button = event.submitter || event.target.querySelector('[data-confirm]');
    var question = button && button.getAttribute('data-confirm');
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // The ticket list gains new tickets as they are opened, without a reload: pushed by the server
  // (server-sent events), or, where that fails, asked for every 3 seconds.
  var table = document.getElementById('tickets');
  if (!table || !table.dataset.live) return;
  var body = table.tBodies[0];
  var url = new URL(table.dataset.live, location.href);

  function cell(row, text, href) {
    var td = row.insertCell(-1);
    if (href) {
      var a = document.createElement('a');
      a.href = href;
      a.textContent = text;
      td.appendChild(a);
    } else td.textContent = text;
    return td;
  }
  function badge(row, value, kind) {
    var span = document.createElement('span');
    span.className = 'badge ' + kind + '-' + value;
    span.textContent = value;
    row.insertCell(-1).appendChild(span);
  }
  function when(iso) { return iso ? iso.slice(0, 19).replace('T', ' ') : '–'; }

  function add(t) {
    if (body.querySelector('tr[data-id="' + t.id + '"]')) return;
    var empty = body.querySelector('tr.empty');
    if (empty) empty.remove();
    var row = body.insertRow(0);
    row.dataset.id = String(t.id);
    row.className = 'new';
    var link = '/admin/tickets/' + encodeURIComponent(t.id);
    cell(row, String(t.id), link);
    cell(row, t.subject, link).className = 'subject';
    badge(row, t.status, 'status');
    badge(row, t.priority, 'priority');
    cell(row, t.kind);
    cell(row, t.channel || '–');
    cell(row, t.flow || '–');
    cell(row, t.assignee || '–');
    cell(row, when(t.created_at));
    cell(row, when(t.updated_at));
  }

  function show(tickets) {
    tickets.slice().reverse().forEach(add);
    var top = tickets.reduce(function (m, t) { return Math.max(m, t.id); }, Number(url.searchParams.get('after') || 0));
    url.searchParams.set('after', String(top));
    document.title = document.title.replace(/^\(\d+ new\) /, '');
    var fresh = body.querySelectorAll('tr.new').length;
    if (fresh) document.title = '(' + fresh + ' new) ' + document.title;
  }

  function poll() {
    fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) show(data.tickets || []); })
      .catch(function () { /* offline for a moment: try again next time */ })
      .finally(function () { setTimeout(poll, 3000); });
  }

  if (table.dataset.stream && window.EventSource) {
    // The browser reconnects a dropped stream by itself; a refused one (signed out) ends it.
    var stream = new EventSource(table.dataset.stream);
    stream.addEventListener('tickets', function (event) { show(JSON.parse(event.data).tickets || []); });
    stream.addEventListener('signed-out', function () { stream.close(); });
    stream.onerror = function () {
      if (stream.readyState === EventSource.CLOSED) setTimeout(poll, 3000);
    };
  } else setTimeout(poll, 3000);
})();
