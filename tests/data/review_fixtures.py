"""Realistic Amazon Review and Google Local releases, written by tests (or
`python -m tests.data.review_fixtures RELEASE DIR [USERS]`).

Each file has the published name, field names and value types of its release
(Amazon 2014 / 2018 5-core + metadata; Google Local 2018 `reviews.clean.json` +
`places.clean.json` as Python-literal lines; Google Local 2021 `review-*` + `meta-*`
JSON lines), hundreds of users with 5 to 14 reviews each, and what real dumps hold:
missing fields (no review text, no reviewer name, no title, no categories), unicode,
HTML entities, duplicated review rows, several reviews of one user at the same time
(Amazon times are whole days), and (Google 2018) reviews without a time.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import pathlib

import numpy as np

import data_pipelines as dp

RELEASES = ('amazon_2014', 'amazon_2018', 'google_2018', 'google_2021')
CATEGORIES = [['Musical Instruments', 'Guitars', 'Electric Guitars'],
              ['Musical Instruments', 'Amplifiers & Effects', 'Pedals'],
              ['Musical Instruments', 'Microphones'], ['Musical Instruments']]
PLACE_CATEGORIES = [['Mexican restaurant', 'Restaurant'], ['Coffee shop', 'Cafe'],
                    ['Hardware store'], None]
NAMES = ['Fender Strings &amp; Picks (10 pack)', 'Café Zoë Guitar Pedal', '東京ラーメン Amp',
         'Shure SM58 &quot;Pro&quot; Mic', 'Capo – Nickel 🎸', 'Plain Item']
TEXTS = ['Works great &amp; sounds &quot;warm&quot;.', 'Très bien, j&#39;adore!',
         'Good value.<br/>Would buy again.', '  lots   of\nspaces ', '最高です', '']
DAY = 86_400


@dataclasses.dataclass
class Written:
  """A written release and what a reader must find in it.

  Attributes:
    folder: the release folder.
    reviews, meta: the review file and item file.
    users: users with reviews (all have >= 5 distinct ones).
    reviews_written: review rows written, duplicates included.
    duplicates: review rows that repeat an earlier row.
    without_time: rows whose time is None (Google 2018).
    tie_user, tie_items: a user with two reviews at the same time, their items in
      file order.
  """

  folder: pathlib.Path
  reviews: pathlib.Path
  meta: pathlib.Path
  users: int
  reviews_written: int
  duplicates: int
  without_time: int
  tie_user: str
  tie_items: tuple[str, str]


def data_config(name: str, path, tmp_path: pathlib.Path, history_len: int, **kw):
  """`config.data` of dataset `name` at `path`, cached under tmp_path, with `kw` set."""
  c = dp.default_data_config(name, str(path))
  c.cache_dir = str(tmp_path / 'cache')
  c.history_len = history_len
  c.update(kw)
  return c


def _write_lines(path: pathlib.Path, lines: list[str], gz: bool) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  text = ''.join(line + '\n' for line in lines)
  if gz:
    path = path.with_name(path.name + '.gz')
    with gzip.open(path, 'wt', encoding='utf-8') as f:
      f.write(text)
  else:
    path.write_text(text, encoding='utf-8')
  return path


def _events(users: int, items: int, seed: int):
  """(user, item, day, k) per review (k a running index) in file order; user 0
  reviews two items on the same day."""
  rng = np.random.default_rng(seed)
  out, k = [], 0
  for u in range(users):
    n = int(rng.integers(5, 15))
    chosen = rng.choice(items, size=n, replace=False)
    days = np.sort(rng.integers(0, 2000, n))
    if u == 0:
      days[1] = days[0]
    for item, day in zip(chosen.tolist(), days.tolist()):
      out.append((u, item, day, k))
      k += 1
  rng.shuffle(out)  # Files are not sorted by user or time.
  first = sorted((e for e in out if e[0] == 0), key=lambda e: e[3])
  # User 0 first, its two same-day reviews in the opposite of their k order: equal
  # times must keep this file order.
  return [first[1], first[0]] + first[2:] + [e for e in out if e[0] != 0]


def write_release(release: str, folder: pathlib.Path, users: int = 300, items: int = 60,
                  gz: bool = False, seed: int = 0) -> Written:
  """Writes `release` (one of RELEASES) into `folder`; see `Written`."""
  events = _events(users, items, seed)
  tie = sorted(events[:2], key=lambda e: e[3])  # By k: the later one is in the file first.
  lines, dups, no_time = [], 0, 0
  amazon = release.startswith('amazon')
  item_id = (lambda i: f'B00{i:05d}X') if amazon else (
      (lambda i: f'0x89e{i:04x}:0x{i:06x}') if release == 'google_2021' else
      (lambda i: f'1{i:020d}'))
  user_id = (lambda u: f'A{u:04d}ZQ') if amazon else (lambda u: f'10{u:019d}')
  for n, (u, i, day, k) in enumerate(events):
    t = 1_262_304_000 + day * DAY  # 2010-01-01 + day; Amazon times are whole days.
    text = TEXTS[k % len(TEXTS)]
    when = datetime.datetime.fromtimestamp(t, datetime.UTC)
    if release == 'amazon_2014':
      row = dict(reviewerID=user_id(u), asin=item_id(i), reviewerName=f'Zoë {u}',
                 helpful=[k % 3, k % 5], reviewText=text, overall=float(1 + k % 5),
                 summary='Five Stars', unixReviewTime=t,
                 reviewTime=when.strftime('%m %d, %Y'))
      if k % 7 == 0:
        del row['reviewerName']
      line = json.dumps(row)
    elif release == 'amazon_2018':
      row = dict(overall=float(1 + k % 5), verified=bool(k % 2),
                 reviewTime=when.strftime('%m %d, %Y'), reviewerID=user_id(u),
                 asin=item_id(i), style={'Color:': ' Black'}, reviewerName=f'Zoë {u}',
                 reviewText=text, summary='Five Stars', unixReviewTime=t)
      if k % 5 == 0:
        row['vote'] = str(k % 40)
      if k % 7 == 0:
        del row['reviewText']
      line = json.dumps(row)
    elif release == 'google_2018':
      row = {'rating': float(1 + k % 5), 'reviewerName': f'Zoë {u}',
             'reviewText': text or None, 'categories': PLACE_CATEGORIES[i % 4],
             'gPlusPlaceId': item_id(i), 'unixReviewTime': t + k % 3600,
             'reviewTime': when.strftime('%b %d, %Y'), 'gPlusUserId': user_id(u)}
      if u == 0 and k == tie[1][3]:
        row['unixReviewTime'] = 1_262_304_000 + tie[0][2] * DAY + tie[0][3] % 3600
      line = repr(row)
    else:  # google_2021: milliseconds.
      row = dict(user_id=user_id(u), name=f'Zoë {u}', time=(t + k % 3600) * 1000,
                 rating=1 + k % 5, text=text or None, pics=None,
                 resp={'time': t * 1000, 'text': 'Thanks!'} if k % 9 == 0 else None,
                 gmap_id=item_id(i))
      if u == 0 and k == tie[1][3]:
        row['time'] = (1_262_304_000 + tie[0][2] * DAY + tie[0][3] % 3600) * 1000
      line = json.dumps(row, ensure_ascii=False)
    lines.append(line)
    if n % 50 == 49:  # A repeated row (Amazon 2018 has many).
      lines.append(line)
      dups += 1
  if release == 'google_2018':
    for extra in range(3):  # Published rows without a time.
      lines.append(repr({'rating': 4.0, 'reviewerName': 'x', 'reviewText': 'No date',
                         'categories': None, 'gPlusPlaceId': item_id(extra),
                         'unixReviewTime': None, 'reviewTime': None,
                         'gPlusUserId': user_id(users + extra)}))
      no_time += 1
  names = {
      'amazon_2014': ('reviews_Musical_Instruments_5.json', 'meta_Musical_Instruments.json'),
      'amazon_2018': ('Musical_Instruments_5.json', 'meta_Musical_Instruments.json'),
      'google_2018': ('reviews.clean.json', 'places.clean.json'),
      'google_2021': ('review-Vermont.json', 'meta-Vermont.json'),
  }[release]
  reviews = _write_lines(folder / names[0], lines, gz)
  meta = _write_lines(folder / names[1], [_meta_line(release, item_id(i), i)
                                          for i in range(items)], gz)
  return Written(folder, reviews, meta, users, len(lines), dups, no_time, user_id(0),
                 (item_id(events[0][1]), item_id(events[1][1])))


def _meta_line(release: str, item: str, i: int) -> str:
  name = NAMES[i % len(NAMES)] + f' #{i}'
  if release == 'amazon_2014':  # Python literals; some products have no title.
    row = {'asin': item, 'salesRank': {'Musical Instruments': 100 + i},
           'categories': [CATEGORIES[i % 4]], 'price': 9.99}
    if i % 6 != 5:
      row['title'] = name
    return repr(row)
  if release == 'amazon_2018':
    row = dict(category=CATEGORIES[i % 4], tech1='', description=[], fit='',
               title=name if i % 6 != 5 else '', also_buy=[], brand='Fender', feature=[],
               rank='1 in Musical Instruments', main_cat='Musical Instruments',
               price='$9.99', asin=item)
    return json.dumps(row)
  if release == 'google_2018':  # places.clean.json: no categories (on the reviews).
    return repr({'name': name, 'price': None, 'address': ['1 Main St', 'Burlington, VT'],
                 'hours': None, 'phone': None, 'closed': False, 'gPlusPlaceId': item,
                 'gps': [44.47, -73.21]})
  return json.dumps(dict(name=name, address='1 Main St, Burlington, VT 05401',
                         gmap_id=item, description=None, latitude=44.47, longitude=-73.21,
                         category=PLACE_CATEGORIES[i % 4], avg_rating=4.2,
                         num_of_reviews=12, price=None, hours=None, MISC=None,
                         state='Open', relative_results=[], url='https://maps.google.com'),
                    ensure_ascii=False)


if __name__ == '__main__':  # python -m tests.data.review_fixtures RELEASE DIR [USERS]
  import sys  # pylint: disable=g-import-not-at-top
  written = write_release(sys.argv[1], pathlib.Path(sys.argv[2]),
                          users=int(sys.argv[3]) if len(sys.argv) > 3 else 300)
  print(f'{written.reviews}: {written.reviews_written} rows, {written.duplicates} repeated; '
        f'{written.meta}')
