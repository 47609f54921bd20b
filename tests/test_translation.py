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


# ---------------------------------------------------------------- the Chinese style sheet (book/locales/zh_CN/style.md)


def test_chinese_edition_follows_the_style_sheet():
    problems = translation.typography_problems()
    assert not problems, (f"{len(problems)} messages break the Chinese style sheet (book/locales/zh_CN/style.md):\n"
                          + "\n".join(problems[:40]))


PLANTED = "**A planted sentence.** It is there for the style check."  # a bold lead-in, as many paragraphs start


def _style_findings(tmp_path: Path, chinese: str, english: str = PLANTED) -> list[str]:
    """What the typography check says about one message planted in a copy of Chapter 2's catalogue."""
    catalogues = tmp_path / "LC_MESSAGES"
    chapter = catalogues / "book" / "02_attention.po"
    chapter.parent.mkdir(parents=True)
    shutil.copy(translation.CATALOGUES / "book" / "02_attention.po", chapter)
    _rewrite(chapter, lambda catalogue: catalogue.add(english, chinese))
    return [line for line in translation.typography_problems(catalogues) if line.endswith(f"{english!r}")]


# Each rule: a sentence that breaks it, and the same sentence as the style sheet writes it (with, where a rule
# could catch too much, what it must leave alone).
STYLE_EXAMPLES = [
    ("spaced dash", "损失下降 — 但很慢。", "损失下降——但很慢。"),
    ("spaced dash", "损失下降 —— 但很慢。", "损失下降——但很慢。"),
    ("single dash", "损失下降—但很慢。", "损失下降——但很慢。"),
    ("ASCII dash", "损失下降 -- 但很慢。", "损失下降——但很慢。运行 --preset cpu 即可。"),
    ("space before %", "准确率为 95 %。", "准确率为 95%。"),
    ("space before %", "准确率为 {glue:text}`accuracy:.1f` %。", "准确率为 {glue:text}`accuracy:.1f`%。"),
    ("ASCII double quotes", '所谓"自检"就是一个单元格。', "所谓“自检”就是一个单元格。"),
    ("corner brackets", "所谓「自检」就是一个单元格。", "所谓“自检”就是一个单元格，`print(\"ok\")` 除外。"),
    ("bold lead-in", "**算一个数。**实验中的助手最简单。", "**算一个数**。实验中的助手最简单，**数据飞轮**。"),
    ("bold lead-in", "**算一个数。** 实验中的助手最简单。", "**算一个数**。实验中的助手最简单。"),
    ("bold lead-in", "**练习卡住了？**可以跳过。", "**练习卡住了**？可以跳过。"),
    ("half-width enumerator", "(a) 先算损失，(b) 再求梯度。", "（a）先算损失，（b）再求梯度，log(sigmoid(x)) 除外。"),
    ("half-width enumerator", "分两步：(1) 预填充，(2) 解码。", "分两步：（1）预填充，（2）解码。"),
    ("算术 for compute", "训练所需的算术随参数量增长。", "训练所需的算力随参数量增长，算术强度则不变。"),
    ("旋钮 for knob", "温度是解码的一个旋钮。", "温度是解码的一个可调参数。"),
    ("杠杆 for lever", "批处理是提高吞吐量的杠杆。", "批处理是提高吞吐量的手段。"),
    ("百万 after a decimal", "模型有 22.7 百万个参数。", "模型有 2270 万个参数，每百万词元 0.2 美元。"),
    ("百万 after a decimal", "模型有 {glue:text}`millions:.1f` 百万个参数。", "模型有 {glue:text}`count:,d` 个参数。"),
    ("GPU 的主存", "权重放在 GPU 的主存里。", "权重放在显存里。"),
    ("模块 for block", "每个模块先做注意力。", "每个块先做注意力。"),
]


@pytest.mark.parametrize("rule, wrong, right", STYLE_EXAMPLES,
                         ids=[f"{rule}-{number}" for number, (rule, _, _) in enumerate(STYLE_EXAMPLES)])
def test_typography_check_catches_a_planted_mistake(tmp_path, rule, wrong, right):
    found = _style_findings(tmp_path / "wrong", wrong)
    assert any(f": {rule} (" in line for line in found), found
    assert _style_findings(tmp_path / "right", right) == []


def test_the_style_sheets_bold_lead_in_is_bold_on_the_page_and_the_other_is_not():
    """Why the stop goes after the bold: MyST (CommonMark) closes ** after a punctuation mark only when a space or
    another punctuation mark follows, so "**算一个数。**正文" shows its asterisks on the page."""
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    parser = create_md_parser(MdParserConfig(), RendererHTML)
    assert "<strong>算一个数</strong>。正文" in parser.render("**算一个数**。正文")
    assert "<strong>" not in parser.render("**算一个数。**正文") and "**" in parser.render("**算一个数。**正文")


def test_typography_check_leaves_alone_python_modules_english_text_and_empty_cells(tmp_path):
    """模块 where the English says module (or submodule) is the right word; a message with no Chinese (a name, a
    number) is not Chinese prose; a table's lone "—" means "none"."""
    assert _style_findings(tmp_path / "module", "这个模块提供注意力。", "This module provides attention.") == []
    assert _style_findings(tmp_path / "submodule", "各个子模块的名称不变。", "The submodules keep their names.") == []
    assert _style_findings(tmp_path / "english", 'GPT-2 "small" — 124M (95 %)') == []
    assert _style_findings(tmp_path / "cell", "—（测量）", "— (measure)") == []
