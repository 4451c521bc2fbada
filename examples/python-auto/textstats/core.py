import collections


def summarize(text: str) -> dict[str, object]:
    words = text.split()
    common = collections.Counter(words).most_common(1)[0]
    return {"words": len(words), "unique": len(set(words)), "most_common": common[0]}
