# Structured chart data of a matplotlib figure, in @e2b/code-interpreter's Chart types
# (contract §5): line, scatter, bar, pie, box_and_whisker, superchart (several Axes) and
# unknown. Called by the e2b/chart formatter (startup.py) after the PNG is rendered, so
# tick labels are drawn.
import math
import re
from datetime import date, datetime

import matplotlib.dates as mdates
import numpy as np
from matplotlib.category import UnitData
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch, Rectangle, Wedge
from matplotlib.text import Text


def chart_of_figure(fig):
    axes = [a for a in fig.get_axes() if a.has_data()]
    if not axes:
        return None
    if len(fig.get_axes()) > 1:
        title = fig._suptitle.get_text() if getattr(fig, '_suptitle', None) else ''
        return {'type': 'superchart', 'title': title, 'elements': [chart_of_axes(a) for a in fig.get_axes()]}
    return chart_of_axes(axes[0])


def chart_of_axes(ax):
    kind = _kind(ax)
    title = ax.get_title() or None
    if kind == 'line':
        return {'type': 'line', 'title': title, **_two_d(ax), **_point_axes(ax), 'elements': _lines(ax)}
    if kind == 'scatter':
        return {'type': 'scatter', 'title': title, **_two_d(ax), **_point_axes(ax), 'elements': _scatters(ax)}
    if kind == 'bar':
        return _bars(ax, title)
    if kind == 'pie':
        return {'type': 'pie', 'title': title, 'elements': _wedges(ax)}
    if kind == 'box_and_whisker':
        return _boxes(ax, title)
    return {'type': 'unknown', 'title': title, 'elements': []}


def _kind(ax):
    objects = [o for o in ax._children if not isinstance(o, Text)]
    if all(isinstance(o, Line2D) for o in objects):
        return 'line'
    if all(isinstance(o, (PathPatch, Line2D)) for o in objects):
        return 'box_and_whisker'
    objects = [o for o in objects if not (isinstance(o, Line2D) and _grid_like(o))]
    for kind, types in (('scatter', PathCollection), ('pie', Wedge), ('bar', Rectangle)):
        if objects and all(isinstance(o, types) for o in objects):
            return kind
    return 'unknown'


def _grid_like(line):
    x, y = line.get_xydata().T if len(line.get_xydata()) else ([], [])
    return len(x) == 2 and (x[0] == x[1] or y[0] == y[1])


def _unit(label):
    if not label:
        return None
    m = re.search(r' \((.*?)\)|\[(.*?)\]', label)
    return (m.group(1) if m.group(1) is not None else m.group(2)) if m else None


def _two_d(ax, swap=False):
    x, y = ax.get_xlabel() or None, ax.get_ylabel() or None
    if swap:
        x, y = y, x
    return {'x_label': x, 'y_label': y, 'x_unit': _unit(x), 'y_unit': _unit(y)}


def _is_date(axis):
    return isinstance(axis.converter, (mdates.DateConverter, mdates._SwitchableDateConverter)) if hasattr(mdates, '_SwitchableDateConverter') else isinstance(axis.converter, mdates.DateConverter)


def _scale(ax, axis, ticks, labels):
    if _is_date(axis):
        return 'datetime'
    scale = axis.get_scale()
    if scale != 'linear':
        return scale
    if isinstance(axis.units, UnitData):
        return 'categorical'
    if ticks and all(t == i for i, t in enumerate(ticks)) and any(l != str(i) for i, l in enumerate(labels)):
        return 'categorical'
    return 'linear'


def _point_axes(ax):
    out = {}
    for name, axis, ticks, labels in (('x', ax.xaxis, ax.get_xticks(), ax.get_xticklabels()), ('y', ax.yaxis, ax.get_yticks(), ax.get_yticklabels())):
        texts = [l.get_text() for l in labels]
        if _is_date(axis):
            values = [mdates.num2date(t).isoformat() for t in ticks]
        else:
            values = [_num(t) for t in ticks]
        out[f'{name}_ticks'] = values
        out[f'{name}_tick_labels'] = texts
        out[f'{name}_scale'] = _scale(ax, axis, [_num(t) for t in ticks], texts)
    return out


def _num(v):
    f = float(v)
    return f if math.isfinite(f) else None


def _value(v, is_date=False):
    if isinstance(v, np.datetime64):
        return np.datetime_as_string(v, unit='s')
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, (str, np.str_)):
        return str(v)
    if is_date:
        return mdates.num2date(float(v)).isoformat()
    try:
        return _num(v)
    except (TypeError, ValueError):
        return str(v)


def _label(artist, prefix, auto, n):
    label = artist.get_label()
    return f'{prefix} {n}' if label is None or str(label).startswith(auto) else str(label)


def _lines(ax):
    out = []
    for i, line in enumerate(l for l in ax.get_lines() if not _grid_like(l)):
        points = [[_value(x), _value(y)] for x, y in zip(line.get_xdata(), line.get_ydata())]
        out.append({'label': _label(line, 'Line', '_child', i), 'points': points})
    return out


def _scatters(ax):
    xd, yd = _is_date(ax.xaxis), _is_date(ax.yaxis)
    return [
        {'label': str(c.get_label()), 'points': [[_value(x, xd), _value(y, yd)] for x, y in c.get_offsets()]}
        for c in ax.collections
        if isinstance(c, PathCollection)
    ]


def _nearest_label(pos, ticks, labels):
    if not len(ticks):
        return ''
    i = int(np.argmin([abs(t - pos) for t in ticks]))
    return labels[i] if i < len(labels) else ''


def _bars(ax, title):
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    heights = [r.get_height() for c in containers for r in c]
    horizontal = len(heights) > 1 and all(h == heights[0] for h in heights)
    if horizontal:
        ticks, labels = ax.get_yticks(), [l.get_text() for l in ax.get_yticklabels()]
    else:
        ticks, labels = ax.get_xticks(), [l.get_text() for l in ax.get_xticklabels()]
    elements = []
    for n, c in enumerate(containers):
        group = _label(c, 'Group', '_container', n)
        for r in c:
            pos = r.get_y() + r.get_height() / 2 if horizontal else r.get_x() + r.get_width() / 2
            value = r.get_width() if horizontal else r.get_height()
            elements.append({'label': _nearest_label(pos, ticks, labels), 'group': group, 'value': _num(value)})
    return {'type': 'bar', 'title': title, **_two_d(ax, swap=horizontal), 'elements': elements}


def _sig(v, digits=8):
    v = float(v)
    return 0.0 if v == 0 else round(v, digits - int(math.floor(math.log10(abs(v)))) - 1)


def _wedges(ax):
    return [
        {'label': str(w.get_label()), 'angle': _sig(abs(w.theta2 - w.theta1), 6), 'radius': _num(w.r)}
        for w in ax.patches
        if isinstance(w, Wedge)
    ]


def _boxes(ax, title):
    boxes = []
    for p in ax.patches:
        if isinstance(p, PathPatch):
            v = p.get_path().vertices
            boxes.append([v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max()])
    heights = [b[3] - b[2] for b in boxes]
    horizontal = len(boxes) > 1 and all(h == heights[0] for h in heights)
    # fliers are marker-only lines; whiskers, caps and medians are drawn
    lines = [(l.get_xydata(), l.get_linestyle() in ('None', '', ' ')) for l in ax.get_lines()]
    if horizontal:
        boxes = [[b[2], b[3], b[0], b[1]] for b in boxes]
        lines = [(d[:, ::-1], f) for d, f in lines]
        ticks, labels = ax.get_yticks(), [l.get_text() for l in ax.get_yticklabels()]
    else:
        ticks, labels = ax.get_xticks(), [l.get_text() for l in ax.get_xticklabels()]
    elements = []
    for x0, x1, y0, y1 in boxes:
        e = {'label': _nearest_label((x0 + x1) / 2, ticks, labels), 'min': _sig(y0), 'first_quartile': _sig(y0), 'median': _sig(y0),
             'third_quartile': _sig(y1), 'max': _sig(y1), 'outliers': []}
        for d, flier in lines:
            if not len(d) or not all(x0 <= x <= x1 for x in d[:, 0]):
                continue
            ys = d[:, 1]
            if flier:
                e['outliers'].extend(_sig(y) for y in ys)
            elif len(d) == 2 and ys[0] == ys[1] and y0 <= ys[0] <= y1 and d[0, 0] != d[1, 0] and abs(d[1, 0] - d[0, 0]) >= (x1 - x0) * 0.99:
                e['median'] = _sig(ys[0])
            elif len(d) == 2 and d[0, 0] == d[1, 0]:
                if max(ys) <= y0:
                    e['min'] = _sig(min(ys))
                elif min(ys) >= y1:
                    e['max'] = _sig(max(ys))
        elements.append(e)
    return {'type': 'box_and_whisker', 'title': title, **_two_d(ax, swap=horizontal), 'elements': elements}
