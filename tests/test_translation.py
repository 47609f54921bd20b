"""The Chinese edition: every English message translated, the glossary's terms used, both editions linked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from babel.messages.pofile import read_po, write_po

from llmlab.course import site as course_site
from llmlab.course import translation

ROOT = Path(__file__).resolve().parent.parent
CHINESE = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="session")
def templates(built_book, tmp_path_factory) -> Path:
    """The messages of the English pages as they are now, extracted from the sources (the .pot files)."""
    return translation.extract_messages(built_book.parent.parent, tmp_path_factory.mktemp("gettext") / "pot")


def _copy_catalogues(folder: Path) -> Path:
    """A copy of the Chinese catalogues in ``folder/LC_MESSAGES`` (sphinx-intl's layout under a language's folder)."""
    copy = folder / "LC_MESSAGES"
    shutil.copytree(translation.CATALOGUES, copy, ignore=shutil.ignore_patterns("*.mo"))
    return copy


def _rewrite(path: Path, change) -> None:
    with path.open("rb") as handle:
        catalogue = read_po(handle)
    change(catalogue)
    with path.open("wb") as handle:
        write_po(handle, catalogue, width=0)


# ---------------------------------------------------------------- completeness


def test_every_english_message_has_a_current_translation(templates):
    pages = set(translation.catalogue_pages(templates, ".pot"))
    assert "book/02_attention" in pages and "solutions/04b_instruction_tuning" in pages and "book/glossary" in pages
    assert pages == set(translation.catalogue_pages(translation.CATALOGUES, ".po")), "a page without a catalogue, or a catalogue without a page"
    problems = translation.untranslated(templates)
    assert not problems, f"{len(problems)} messages need a translation (run `make translations`):\n" + "\n".join(problems[:40])


def test_a_changed_english_sentence_is_caught(templates, tmp_path):
    """Change one English sentence: the check reports it until the catalogue translates the new sentence."""
    pot_copy = tmp_path / "pot"
    shutil.copytree(templates, pot_copy)
    chapter = pot_copy / "book" / "02_attention.pot"
    with chapter.open("rb") as handle:
        sentences = [entry.id for entry in read_po(handle) if entry.id and translation.has_words(entry.id)]
    original = sentences[3]
    changed = original.rstrip(".") + ", as the code below shows."
    _rewrite(chapter, lambda catalogue: _replace_id(catalogue, original, changed))
    problems = translation.untranslated(pot_copy)
    assert len(problems) == 1 and problems[0].startswith("book/02_attention: not in the catalogue") and changed[:40] in problems[0]

    # The usual way back: `make translations` merges the new text, which becomes fuzzy until someone translates it.
    locale = tmp_path / "locales"
    catalogues = _copy_catalogues(locale / translation.LANGUAGE)
    translation.update_catalogues(pot_copy, locale)
    problems = translation.untranslated(pot_copy, catalogues)
    assert len(problems) == 1 and ("fuzzy" in problems[0] or "untranslated" in problems[0]), problems

    def translate(catalogue):
        for entry in catalogue:
            if entry.id == changed:
                entry.string = entry.string or "新的译文。"
                entry.flags.discard("fuzzy")
    _rewrite(catalogues / "book" / "02_attention.po", translate)
    assert translation.untranslated(pot_copy, catalogues) == []


def _replace_id(catalogue, old: str, new: str) -> None:
    entry = catalogue[old]
    catalogue.delete(old)
    catalogue.add(new, "", locations=entry.locations)


def test_messages_without_words_are_kept_as_they_are():
    assert not translation.has_words("\np(x_1, \\dots, x_N) = \\prod_{t=1}^{N} p(x_t \\mid x_{<t})\n")
    assert not translation.has_words("{cite:t}`vaswani2017attention`")
    assert not translation.has_words("`llmlab.attention`")
    assert not translation.has_words("\\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}(Q K^\\top) V")  # a notebook's formula
    assert translation.has_words("AdamW")
    assert translation.has_words("The loss is $L$ nats.")


def test_exercise_titles_are_plain_words():
    """An exercise's title becomes a message as its plain text (llmlab/course/translation.py), which is its
    source only while titles carry no markup."""
    titles = [line.split("}", 1)[1].strip() for path in sorted((ROOT / "book").glob("*.md"))
              for line in path.read_text(encoding="utf-8").splitlines() if re.match(r"^:::+\{exercise\}", line)]
    assert len(titles) >= 30
    for title in titles:
        assert not re.search(r"[`$*_\[\]{}<>]", title), f"exercise title with markup: {title!r}"


# ---------------------------------------------------------------- the glossary


def test_glossary_lists_each_term_once_with_its_chinese():
    terms = translation.glossary()
    assert len(terms) >= 80
    english = [term.english.lower() for term in terms]
    assert len(set(english)) == len(english), "a term is listed twice"
    by_name = {term.english: term for term in terms}
    assert by_name["token"].chinese == "词元" and "tokens" in by_name["token"].english_forms
    assert by_name["attention"].chinese == "注意力"
    for term in terms:
        assert term.definition.endswith("."), f"{term.english}: the definition is one sentence"
        assert CHINESE.search(term.chinese) or term.chinese.lower() == term.english.lower(), f"{term.english}: {term.chinese!r}"
        assert term.chinese not in term.avoided


def test_chinese_edition_writes_every_glossary_term_the_glossary_way():
    problems = translation.glossary_misuse()
    assert not problems, f"{len(problems)} messages render a glossary term otherwise:\n" + "\n".join(problems[:40])


def test_glossary_check_catches_another_rendering_and_a_missing_term(tmp_path):
    catalogues = _copy_catalogues(tmp_path)
    chapter = catalogues / "book" / "01_what_is_an_llm.po"
    with chapter.open("rb") as handle:
        entry = next(entry for entry in read_po(handle) if re.search(r"\btokens\b", entry.id) and "词元" in entry.string)
    wrong = entry.string.replace("词元", "令牌")

    def use_another_rendering(catalogue):
        catalogue[entry.id].string = wrong
    _rewrite(chapter, use_another_rendering)
    problems = translation.glossary_misuse(catalogues)
    assert any("'令牌' for 'token'" in line for line in problems), problems
    assert any("'token' is not rendered '词元'" in line for line in problems), problems


def test_translations_keep_code_maths_roles_and_links():
    problems = translation.markup_mismatches()
    assert not problems, "\n".join(problems[:40])


def test_markup_check_catches_a_lost_citation(tmp_path):
    catalogues = _copy_catalogues(tmp_path)
    chapter = catalogues / "book" / "02_attention.po"

    def drop_a_citation(catalogue):
        entry = next(entry for entry in catalogue if entry.id and "{cite:" in entry.string)
        entry.string = re.sub(r"\{cite:[a-z]+\}`[^`]*`", "", entry.string, count=1)
    _rewrite(chapter, drop_a_citation)
    assert any("markup differs" in line and "{cite:" in line for line in translation.markup_mismatches(catalogues))


# ---------------------------------------------------------------- the built editions


def _switch_link(page: Path) -> str:
    match = re.search(rf'<p class="{course_site.LANGUAGE_SWITCH_CLASS}"[^>]*><a href="([^"]+)"', page.read_text(encoding="utf-8"))
    assert match, f"{page} has no language link"
    return match.group(1)


def test_every_page_links_to_the_same_page_in_the_other_language(built_book):
    chinese_site = built_book / translation.LANGUAGE
    english_pages = [page for page in course_site.html_pages(built_book)
                     if translation.LANGUAGE not in page.relative_to(built_book).parts and page.name not in ("search.html", "genindex.html")]
    assert len(english_pages) >= 18
    for page in english_pages:
        relative = page.relative_to(built_book)
        if relative.name == "index.html" and len(relative.parts) == 1:
            continue  # the redirect to book/intro.html
        target = (page.parent / _switch_link(page)).resolve()
        assert target == (chinese_site / relative).resolve() and target.is_file(), f"{relative}: its language link goes to {target}"
        back = (target.parent / _switch_link(target)).resolve()
        assert back == page.resolve(), f"zh_CN/{relative}: its language link goes to {back}"


def test_chinese_pages_are_chinese_with_the_same_code_outputs(built_book):
    english = (built_book / "book" / "02_attention.html").read_text(encoding="utf-8")
    chinese = (built_book / translation.LANGUAGE / "book" / "02_attention.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN"' in chinese or "<html lang='zh-CN'" in chinese
    assert "注意力" in chinese and "多头注意力" in chinese
    assert "章节与实验" in chinese and "Chapters and labs" not in chinese, "the sidebar's captions are not translated"
    text = " ".join(re.sub(r"<[^>]+>", "", chinese).split())
    assert len(CHINESE.findall(text)) > 3000, "the Chinese page is mostly English"
    # The glued numbers come from the same executed code: every number shown in the English prose's
    # glued spans appears on the Chinese page too.
    glued = re.findall(r'<span class="pasted-text">([^<]+)</span>', english)
    assert glued and all(value in chinese for value in glued)
    for page in ("book/glossary.html", "solutions/04b_instruction_tuning.html", "book/instructors.html"):
        assert CHINESE.search((built_book / translation.LANGUAGE / page).read_text(encoding="utf-8")), page
    # exercises' titles and folded code cells' toggles are Chinese too
    assert "（回顾）为什么要遮住未来？" in chinese
    lab = (built_book / translation.LANGUAGE / "solutions" / "02_attention.html").read_text(encoding="utf-8")
    assert "显示代码" in lab and "Show code cell" not in lab


def test_glossary_is_linked_from_both_editions(built_book):
    for edition in (built_book, built_book / translation.LANGUAGE):
        for page in ("book/intro.html", "book/05_inference.html", "solutions/03_pretraining.html"):
            assert 'href="glossary.html"' in (edition / page).read_text(encoding="utf-8") or \
                'href="../book/glossary.html"' in (edition / page).read_text(encoding="utf-8"), f"{edition / page}"
