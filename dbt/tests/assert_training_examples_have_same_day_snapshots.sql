-- Every impression's user and item have a feature snapshot for the impression's day (the features a
-- point-in-time join finds for the next day's impressions); a missing one means the marts disagree.
select training_examples.impression_id
from {{ ref('training_examples') }} as training_examples
left join {{ ref('user_features') }} as user_features
    on user_features.user_id = training_examples.user_id
    and user_features.snapshot_date = training_examples.event_date
left join {{ ref('item_features') }} as item_features
    on item_features.item_id = training_examples.item_id
    and item_features.snapshot_date = training_examples.event_date
where user_features.user_id is null or item_features.item_id is null
