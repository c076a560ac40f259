from rest_framework.pagination import LimitOffsetPagination


class ManagementPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200
