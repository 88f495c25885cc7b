"""LLM agents as kernel processes: the ReAct agent, the conversation agent, their tools."""

from yool.userland.agents.conversation import Answer, Ask, conversation_agent
from yool.userland.agents.react import react_agent, register_agents, run_turn
from yool.userland.agents.spec import AgentResult, AgentSpec
from yool.userland.agents.tools import Tool, Toolbox, build_toolbox

__all__ = [
    "AgentResult",
    "AgentSpec",
    "Answer",
    "Ask",
    "Tool",
    "Toolbox",
    "build_toolbox",
    "conversation_agent",
    "react_agent",
    "register_agents",
    "run_turn",
]
