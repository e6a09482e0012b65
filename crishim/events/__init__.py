"""Container and sandbox lifecycle events, fanned out to any number of subscribers."""

from crishim.events.bus import EventBus, SubscriberLagged, Subscription
from crishim.events.lifecycle import EventType, LifecycleEvent, LifecycleEvents

__all__ = ["EventBus", "EventType", "LifecycleEvent", "LifecycleEvents", "SubscriberLagged",
           "Subscription"]
