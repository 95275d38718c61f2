from datetime import timedelta

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def last_usable_day(expires_at):
    """Credits expire at the midnight that ends their last day; people think in that day."""
    if expires_at is None:
        return None
    return timezone.localtime(expires_at - timedelta(microseconds=1)).date()
