"""Pictures of a change: the source net beside the edited net (SVG, PNG) and the
self-contained HTML report. Plain data in (:mod:`.model`), text or bytes out; nothing
here knows about operations, specs or the IR."""

from surgery.emitters.picture.html import report_page
from surgery.emitters.picture.model import CHANGE_STYLES, Node, Side
from surgery.emitters.picture.svg import draw_svg

__all__ = ["CHANGE_STYLES", "Node", "Side", "draw_svg", "report_page"]
