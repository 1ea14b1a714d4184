/* cdissect report: loads one layer's data on demand and renders a paginated, searchable table.
 *
 * Each layer's units live in assets/data/layer-N.js, a script that calls
 * window.cdissectLayerLoaded({...}) (file:// pages cannot fetch() JSON in Chromium), so the
 * page only loads the layers a reader opens. Rows are built with DOM calls and textContent,
 * never innerHTML, so concept words cannot inject markup. Navigation state lives in the URL
 * hash: #layer=NAME, optionally &unit=N (jump to a unit) or &q=WORD (search).
 */
(function () {
  'use strict';

  var ASSETS = 'assets/';
  var layers = JSON.parse(document.getElementById('cdissect-layers').textContent);
  var cache = {};
  var waiting = {};
  var state = {
    layer: null, data: null, view: [], query: '', sort: 'unit', filter: 'all',
    page: 0, pageSize: 50, highlight: null
  };
  var FLAG_TEXT = {dead: 'dead', low: 'low', unknown: 'no quality', '': ''};

  function $(id) { return document.getElementById(id); }

  function showError(message) {
    var box = $('errors');
    var p = document.createElement('p');
    p.textContent = message;
    box.appendChild(p);
    box.hidden = false;
  }

  window.cdissectLayerLoaded = function (payload) {
    cache[payload.index] = payload;
    var callbacks = waiting[payload.index] || [];
    delete waiting[payload.index];
    callbacks.forEach(function (cb) { cb(payload); });
  };

  function loadLayer(index, callback) {
    if (cache[index]) { callback(cache[index]); return; }
    if (waiting[index]) { waiting[index].push(callback); return; }
    waiting[index] = [callback];
    var script = document.createElement('script');
    script.src = layers[index].file;
    script.onerror = function () {
      delete waiting[index];
      showError('Could not load ' + layers[index].file + ': regenerate the report with `cdissect report RUN_DIR`.');
    };
    document.head.appendChild(script);
  }

  function layerIndex(name) {
    for (var i = 0; i < layers.length; i++) { if (layers[i].name === name) return i; }
    return -1;
  }

  function parseHash() {
    var out = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      if (!part) return;
      var eq = part.indexOf('=');
      var key = eq < 0 ? part : part.slice(0, eq);
      var value = eq < 0 ? '' : part.slice(eq + 1);
      try { out[decodeURIComponent(key)] = decodeURIComponent(value.replace(/\+/g, ' ')); }
      catch (e) { out[key] = value; }
    });
    return out;
  }

  function unitMatches(row, query) {
    if (!query) return true;
    if (row[1].toLowerCase().indexOf(query) >= 0) return true;
    for (var i = 0; i < row[3].length; i++) {
      if (row[3][i][0].toLowerCase().indexOf(query) >= 0) return true;
    }
    return false;
  }

  function flagMatches(flag, filter) {
    if (filter === 'all') return true;
    if (filter === 'flagged') return flag === 'dead' || flag === 'low';
    if (filter === 'trusted') return flag === '';
    return flag === filter;
  }

  function compareNullable(a, b, descending) {
    if (a === null && b === null) return 0;
    if (a === null) return 1;
    if (b === null) return -1;
    return descending ? b - a : a - b;
  }

  function buildView() {
    var query = state.query.trim().toLowerCase();
    var rows = state.data.units.filter(function (row) {
      return unitMatches(row, query) && flagMatches(row[5], state.filter);
    });
    var sorters = {
      'unit': function (a, b) { return a[0] - b[0]; },
      'score-desc': function (a, b) { return b[2] - a[2] || a[0] - b[0]; },
      'score-asc': function (a, b) { return a[2] - b[2] || a[0] - b[0]; },
      'corr-desc': function (a, b) { return compareNullable(a[8], b[8], true) || a[0] - b[0]; },
      'corr-asc': function (a, b) { return compareNullable(a[8], b[8], false) || a[0] - b[0]; },
      'auprc-desc': function (a, b) { return compareNullable(a[10], b[10], true) || a[0] - b[0]; },
      'auprc-asc': function (a, b) { return compareNullable(a[10], b[10], false) || a[0] - b[0]; },
      'auc-desc': function (a, b) { return compareNullable(a[6], b[6], true) || a[0] - b[0]; },
      'auc-asc': function (a, b) { return compareNullable(a[6], b[6], false) || a[0] - b[0]; }
    };
    rows.sort(sorters[state.sort] || sorters.unit);
    state.view = rows;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? '\u2014' : Number(value).toFixed(digits);
  }

  function cell(tr, className) {
    var td = document.createElement('td');
    td.className = className;
    tr.appendChild(td);
    return td;
  }

  function wordSpan(word, query) {
    var span = document.createElement('span');
    span.textContent = word;
    if (query && word.toLowerCase().indexOf(query) >= 0) span.className = 'match';
    return span;
  }

  function renderRow(row, query) {
    var tr = document.createElement('tr');
    var layerName = state.data.name;
    tr.id = 'unit-' + state.layer + '-' + row[0];
    if (row[5]) tr.className = 'flag-' + row[5];
    if (state.highlight === row[0]) tr.className += ' highlight';

    var link = document.createElement('a');
    link.href = '#layer=' + encodeURIComponent(layerName) + '&unit=' + row[0];
    link.textContent = String(row[0]);
    cell(tr, 'unit').appendChild(link);

    var label = cell(tr, 'label');
    var strong = document.createElement('strong');
    strong.appendChild(wordSpan(row[1], query));
    label.appendChild(strong);
    var score = document.createElement('span');
    score.className = 'score';
    score.textContent = ' ' + fmt(row[2], 4);
    label.appendChild(score);
    if (row[13]) {
      var how = document.createElement('div');
      how.className = 'selected-by';
      how.textContent = 'chosen by ' + row[13];
      label.appendChild(how);
    }

    var list = document.createElement('ol');
    row[3].forEach(function (alt) {
      var li = document.createElement('li');
      li.appendChild(wordSpan(alt[0], query));
      var s = document.createElement('span');
      s.className = 'score';
      s.textContent = ' ' + fmt(alt[1], 4);
      li.appendChild(s);
      list.appendChild(li);
    });
    cell(tr, 'alts').appendChild(list);

    var quality = cell(tr, 'quality');
    if (row[8] !== null && row[8] !== undefined) {
      var r = document.createElement('div');
      r.textContent = 'r ' + fmt(row[8], 3) + (row[9] ? ' [' + fmt(row[9][0], 2) + ', ' + fmt(row[9][1], 2) + ']' : '');
      quality.appendChild(r);
      var ap = document.createElement('div');
      ap.textContent = 'AUPRC ' + fmt(row[10], 3) + ' (chance ' + fmt(row[11], 3) + ')';
      quality.appendChild(ap);
    }
    var auc = document.createElement('div');
    auc.className = 'score';
    auc.textContent = 'AUC ' + fmt(row[6], 3) + ' \u00b7 p ' +
      (row[7] === null ? '\u2014' : Number(row[7]).toPrecision(2));
    quality.appendChild(auc);

    var flagCell = cell(tr, 'flag');
    if (row[5]) {
      var badge = document.createElement('span');
      badge.className = 'badge ' + row[5];
      badge.textContent = FLAG_TEXT[row[5]];
      if (row[12]) badge.title = row[12];
      flagCell.appendChild(badge);
    }

    var imgs = cell(tr, 'images');
    row[4].forEach(function (index) {
      var info = state.data.images[String(index)];
      if (!info) return;
      var img = document.createElement('img');
      img.loading = 'lazy';
      img.decoding = 'async';
      img.width = 64;
      img.height = 64;
      img.src = ASSETS + info[0];
      img.alt = info[1];
      img.title = info[1];
      imgs.appendChild(img);
    });
    return tr;
  }

  function render() {
    var total = state.view.length;
    var pages = Math.max(1, Math.ceil(total / state.pageSize));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    var start = state.page * state.pageSize;
    var slice = state.view.slice(start, start + state.pageSize);
    var query = state.query.trim().toLowerCase();
    var tbody = $('units').tBodies[0];
    var fragment = document.createDocumentFragment();
    slice.forEach(function (row) { fragment.appendChild(renderRow(row, query)); });
    tbody.textContent = '';
    tbody.appendChild(fragment);

    var status = $('row-count');
    status.dataset.count = String(total);
    status.textContent = total === 0 ? 'No unit matches.' :
      'Units ' + (start + 1) + '\u2013' + (start + slice.length) + ' of ' + total +
      (total !== state.data.units.length ? ' matching' : '') + ' (' + state.data.units.length + ' in layer)';
    Array.prototype.forEach.call(document.querySelectorAll('.page-info'), function (el) {
      el.textContent = 'page ' + (state.page + 1) + ' of ' + pages;
    });
    Array.prototype.forEach.call(document.querySelectorAll('.pager .prev'), function (el) {
      el.disabled = state.page === 0;
    });
    Array.prototype.forEach.call(document.querySelectorAll('.pager .next'), function (el) {
      el.disabled = state.page >= pages - 1;
    });
  }

  function refresh(resetPage) {
    if (!state.data) return;
    if (resetPage) state.page = 0;
    buildView();
    render();
  }

  function jumpToUnit(unit) {
    if (!state.data) return;
    var exists = state.data.units.some(function (row) { return row[0] === unit; });
    if (!exists) {
      showError('Layer ' + state.data.name + ' has no unit ' + unit + ' (units 0\u2013' +
                (state.data.units.length - 1) + ').');
      return;
    }
    var position = state.view.findIndex(function (row) { return row[0] === unit; });
    if (position < 0) {  // filtered out: show everything again
      state.query = ''; state.filter = 'all';
      $('search').value = ''; $('filter').value = 'all';
      buildView();
      position = state.view.findIndex(function (row) { return row[0] === unit; });
    }
    state.highlight = unit;
    state.page = Math.floor(position / state.pageSize);
    render();
    var tr = $('unit-' + state.layer + '-' + unit);
    if (tr && tr.scrollIntoView) tr.scrollIntoView({block: 'center'});
  }

  function showOverview() {
    $('overview').hidden = false;
    $('layer-view').hidden = true;
    state.layer = null;
    state.data = null;
  }

  function openLayer(index, options) {
    $('overview').hidden = true;
    $('layer-view').hidden = false;
    $('layer-title').textContent = 'Layer ' + layers[index].name + ' (loading\u2026)';
    $('layer-plot').src = layers[index].plot;
    loadLayer(index, function (payload) {
      var changed = state.layer !== index;
      state.layer = index;
      state.data = payload;
      $('layer-title').textContent = 'Layer ' + payload.name + ': ' + payload.units.length + ' units';
      if (changed) state.highlight = null;
      if (options.q !== undefined) { state.query = options.q; $('search').value = options.q; }
      else if (changed) { state.query = ''; $('search').value = ''; }
      refresh(true);
      if (options.unit !== undefined && options.unit !== '') {
        var unit = parseInt(options.unit, 10);
        if (!isNaN(unit)) { $('jump-unit').value = String(unit); jumpToUnit(unit); }
      }
    });
  }

  function route() {
    var params = parseHash();
    if (!params.layer) { showOverview(); return; }
    var index = layerIndex(params.layer);
    if (index < 0) {
      showOverview();
      showError('This report has no layer "' + params.layer + '"; its layers are: ' +
                layers.map(function (l) { return l.name; }).join(', ') + '.');
      return;
    }
    openLayer(index, params);
  }

  function bindControls() {
    var searchTimer = null;
    $('search').addEventListener('input', function () {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () { state.query = $('search').value; refresh(true); }, 120);
    });
    $('sort').addEventListener('change', function () { state.sort = $('sort').value; refresh(true); });
    $('filter').addEventListener('change', function () { state.filter = $('filter').value; refresh(true); });
    $('page-size').addEventListener('change', function () {
      state.pageSize = parseInt($('page-size').value, 10) || 50;
      refresh(true);
    });
    $('controls').addEventListener('submit', function (event) {
      event.preventDefault();
      var unit = parseInt($('jump-unit').value, 10);
      if (!isNaN(unit)) jumpToUnit(unit);
    });
    Array.prototype.forEach.call(document.querySelectorAll('.pager .prev'), function (el) {
      el.addEventListener('click', function () { state.page -= 1; render(); window.scrollTo(0, 0); });
    });
    Array.prototype.forEach.call(document.querySelectorAll('.pager .next'), function (el) {
      el.addEventListener('click', function () { state.page += 1; render(); window.scrollTo(0, 0); });
    });
  }

  bindControls();
  window.addEventListener('hashchange', route);
  route();
}());
