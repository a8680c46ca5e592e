"""References from code to documentation must resolve inside the repository.

Docstrings and comments cite ``docs/<name>.md#<anchor>`` for behaviour of the original CAST code. Every such file and
anchor (GitHub's slug of a ``#``/``##``/``###`` heading) must exist, and no comment may cite the private
``spec_*.md`` notes the port was written from: users never get those files. Plain text, no jax: fast.
"""

from __future__ import annotations

import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ('cast_jax', 'configs', 'tests')
TEXT_SUFFIXES = {'.py', '.md', '.txt', '.yaml', '.yml', '.json', '.cfg', '.toml'}

# Files (or folders, ending in '/') other engineers were editing while the spec-note citations were replaced, so
# they were left alone then; config_lib.py and data/segmentation.py still cite the notes (listed, with the anchors
# to use, in that change's report). Drop each entry once its file cites docs/ instead.
EXCLUDED = (
    'cast_jax/train/tasks.py',
    'cast_jax/train/inputs.py',
    'cast_jax/evaluators/',
    'cast_jax/superpixels/',
)

DOC_REF = re.compile(r'docs/[\w./-]+?\.md(?:#[\w-]*)?')
# A private spec note by file name (spec_<topic>.md), by topic and section sign, or a bare section sign left from a
# shorthand like '(<section sign>4)'.
SECTION_SIGN = '\u00a7'
SPEC_REF = re.compile(r'spec_[a-z_]+\.md|spec_[a-z_]+\s*' + SECTION_SIGN + '|' + SECTION_SIGN)
HEADING = re.compile(r'^(#{1,3})\s+(.+?)\s*#*\s*$')


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
  text = heading.strip().lower()
  text = ''.join(ch for ch in text if ch.isalnum() or ch in ' -_')
  return text.replace(' ', '-')


def anchors(markdown: str) -> set[str]:
  """Every heading anchor of a markdown text (levels 1-3, outside fenced code), with GitHub's ``-N`` suffixes
  for repeated headings."""
  seen: dict[str, int] = {}
  found = set()
  fenced = False
  for line in markdown.splitlines():
    if line.lstrip().startswith(('```', '~~~')):
      fenced = not fenced
      continue
    match = None if fenced else HEADING.match(line)
    if not match:
      continue
    slug = github_slug(match.group(2))
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    found.add(slug if count == 0 else f'{slug}-{count}')
  return found


def scanned_files() -> list[pathlib.Path]:
  files = []
  for top in SCANNED:
    for path in sorted((REPO_ROOT / top).rglob('*')):
      if path.is_file() and path.suffix in TEXT_SUFFIXES and '__pycache__' not in path.parts:
        files.append(path)
  return files


def references() -> list[tuple[str, int, str]]:
  """(file relative to the repo, line number, the reference as written) for every documentation reference."""
  found = []
  for path in scanned_files():
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
      for ref in DOC_REF.findall(line):
        found.append((path.relative_to(REPO_ROOT).as_posix(), number, ref))
  return found


def test_github_slug_follows_githubs_rules():
  assert github_slug('DeiT mixup') == 'deit-mixup'
  assert github_slug('PyTorch-exact resizes') == 'pytorch-exact-resizes'
  assert github_slug('Token layout and static shapes') == 'token-layout-and-static-shapes'
  assert github_slug('`cast_seg.py`: the (pretrain) stage') == 'cast_segpy-the-pretrain-stage'
  text = '# Title\n## Notes\n```\n# not a heading\n```\n### Notes\n#### Too deep\n'
  assert anchors(text) == {'title', 'notes', 'notes-1'}


def test_the_scan_finds_the_references_it_must_check():
  refs = {ref for _, _, ref in references()}
  # If the pattern or the scanned folders break, the checks below would pass on nothing.
  assert 'docs/original_behaviour.md#graph-pooling' in refs
  assert 'docs/original_behaviour.md#deit-mixup' in refs
  assert len(refs) >= 15


def test_every_docs_reference_names_an_existing_file_and_heading():
  problems = []
  cache: dict[pathlib.Path, set[str]] = {}
  for where, number, ref in references():
    name, _, anchor = ref.partition('#')
    doc = REPO_ROOT / name
    if not doc.is_file():
      problems.append(f'{where}:{number}: {ref}: no file {name} in the repository')
      continue
    if doc not in cache:
      cache[doc] = anchors(doc.read_text(encoding='utf-8'))
    if anchor and anchor not in cache[doc]:
      problems.append(f'{where}:{number}: {ref}: {name} has no heading with anchor #{anchor} '
                      f'(it has: {", ".join(sorted(cache[doc]))})')
  assert not problems, 'broken documentation references:\n' + '\n'.join(problems)


def is_excluded(where: str) -> bool:
  return any(where == entry or (entry.endswith('/') and where.startswith(entry)) for entry in EXCLUDED)


@pytest.mark.parametrize('excluded', EXCLUDED)
def test_excluded_paths_exist(excluded):
  # A renamed or deleted file must leave this list too, or it would hide nothing and mislead.
  path = REPO_ROOT / excluded
  assert path.is_dir() if excluded.endswith('/') else path.is_file(), (
      f'{excluded} is gone: remove it from EXCLUDED in {__file__}')


def test_no_private_spec_references_remain():
  problems = []
  for path in scanned_files():
    where = path.relative_to(REPO_ROOT).as_posix()
    if is_excluded(where):
      continue
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
      if SPEC_REF.search(line):
        problems.append(f'{where}:{number}: {line.strip()}')
  assert not problems, ('these cite spec notes that are not in the repository; cite a section of '
                        'docs/original_behaviour.md or a file of github.com/twke18/CAST instead:\n'
                        + '\n'.join(problems))
