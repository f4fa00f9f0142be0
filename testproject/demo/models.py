from django.db import models


class WaitingListEntry(models.Model):
    email = models.EmailField(unique=True)
    joined_on = models.DateField()
    invite_code = models.CharField(max_length=32, blank=True, default="")
    invited_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.email


class Contact(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200)
    company = models.CharField(max_length=200, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"
