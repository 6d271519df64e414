"""llmi: LLM-I on LangGraph. A policy LLM writes text with `<imgen>` tags; four tools fill the image slots."""

from llmi_graph._checkpoint import serializer as checkpoint_serializer
from llmi_graph.config import Config
from llmi_graph.embed import as_node, as_tool
from llmi_graph.graph import InputError, PolicyError, build_graph, image_store
from llmi_graph.policy import ChatModelPolicy, EmbeddedPolicy, OpenAIPolicy, Policy, Sampling, policy_for
from llmi_graph.state import Figure, ImageRef, ImageResult, Output, PolicyOutput, Request, State
from llmi_graph.store import ImageStore, data_url
from llmi_graph.tags import SOURCES, ImageSlot, ParsedDraft, TextSegment, ToolCall, parse_tags
from llmi_graph.toolbox import Toolbox, close_toolboxes, toolbox_for

__all__ = [
    "SOURCES",
    "ChatModelPolicy",
    "Config",
    "EmbeddedPolicy",
    "Figure",
    "ImageRef",
    "ImageResult",
    "ImageSlot",
    "ImageStore",
    "InputError",
    "OpenAIPolicy",
    "Output",
    "ParsedDraft",
    "Policy",
    "PolicyError",
    "PolicyOutput",
    "Request",
    "Sampling",
    "State",
    "TextSegment",
    "ToolCall",
    "Toolbox",
    "as_node",
    "as_tool",
    "build_graph",
    "checkpoint_serializer",
    "close_toolboxes",
    "data_url",
    "image_store",
    "parse_tags",
    "policy_for",
    "toolbox_for",
]
