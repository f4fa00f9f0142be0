from django.contrib import admin

from .models import Contact, WaitingListEntry


@admin.register(WaitingListEntry)
class WaitingListEntryAdmin(admin.ModelAdmin):
    list_display = ["email", "joined_on", "invite_code", "invited_at"]


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ["email", "name", "company"]
